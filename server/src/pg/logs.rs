//! Job logs in the database ([`PgLogs`]): any node of a cluster serves
//! `GET /v1/jobs/{id}/log?offset=N` from the stored chunks while the worker that runs the job,
//! on another host, writes them.
//!
//! A log is a `logs` row (its length, whether it is complete) and contiguous `log_chunks`
//! `[start_offset, start_offset + length(bytes))`. Bytes are stored exactly as the job's
//! [`LiveLog`] wrote them.
//!
//! The writer never waits for the database: [`LogSink::write`] appends to a local spool file
//! (`<spool>/<id>.spool`, private) and wakes a shipping task, which appends what it has not
//! shipped yet in ranges of at most [`SHIP_CHUNK`] bytes, each with a fenced, offset-checked
//! append ([`append`]): stored only while the job is still held by the attempt and node that
//! opened the log, and only at the stored end. An outage keeps the spool and retries with
//! back-off; a writer whose job was taken away (fenced) stops shipping. [`LogSink::finish`]
//! waits until the spool is shipped, then marks the log done (fenced the same way).
//!
//! Readers read the chunks from the database and, at the stored end of an open log, wait for
//! a `NOTIFY ci_log, '<id>'` (one `LISTEN` connection per [`PgLogs`], fanned out in the
//! process) or a short poll, since notifications are lossy by contract.

use crate::pg::io_error;
use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::Notify;

use super::{Pg, PgError};
use crate::logs::{LiveLog, LogSink, LogStore, LogStream};

/// The most bytes one append ships.
pub const SHIP_CHUNK: usize = 256 * 1024;

/// Chunks a reader fetches at once.
const READ_ROWS: i64 = 8;

/// The back-off between attempts while the database is unavailable.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// How long a closing writer keeps trying through an outage before it gives up (and the
/// bytes it could not ship are lost).
const GIVE_UP: Duration = Duration::from_secs(60);

/// How long a reader at the end of an open log waits for a notification before it looks.
const POLL: Duration = Duration::from_millis(500);

/// A log whose job ended this long ago and that is still not done is taken as complete: its
/// worker died between recording the job's end and closing the log.
const ABANDONED: Duration = Duration::from_secs(30);

/// How long a reader keeps retrying through an outage before its stream fails.
const READER_PATIENCE: Duration = Duration::from_secs(300);

/// The channel of the notifications: the payload is a job id.
const CHANNEL: &str = "ci_log";

/// Logs in the database. Cheap to clone.
#[derive(Clone)]
pub struct PgLogs {
    inner: Arc<Inner>,
}

struct Inner {
    pg: Pg,
    spool: PathBuf,
    /// The writers open on this node.
    live: tokio::sync::Mutex<HashMap<String, Arc<LiveLog>>>,
    /// The readers of this process waiting for more of a log.
    waiters: Arc<Waiters>,
    /// The task that listens for notifications, started by the first reader.
    listener: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

impl std::fmt::Debug for PgLogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLogs")
            .field("pg", &self.inner.pg)
            .field("spool", &self.inner.spool)
            .finish()
    }
}

impl PgLogs {
    /// Logs in `pg`, spooled by this node's writers under `spool_dir` (created private, or
    /// tightened; see [`crate::perms`]) as `<id>.spool`. Spools a previous process left are
    /// removed: the jobs they were of are not this process's. Blocking.
    pub fn new(pg: Pg, spool_dir: PathBuf) -> io::Result<PgLogs> {
        crate::perms::private_dir(&spool_dir)?;
        for entry in fs_err::read_dir(&spool_dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "spool") {
                tracing::warn!(spool = %path.display(),
                    "removing the log spool of a job a previous process ran: its unshipped output is lost");
                fs_err::remove_file(&path)?;
            }
        }
        Ok(PgLogs {
            inner: Arc::new(Inner {
                pg,
                spool: spool_dir,
                live: Default::default(),
                waiters: Default::default(),
                listener: Mutex::new(None),
            }),
        })
    }

    fn spool_path(&self, id: &str) -> PathBuf {
        debug_assert!(!id.contains('/') && !id.starts_with('.'));
        self.inner.spool.join(format!("{id}.spool"))
    }

    /// Starts the listening task unless it runs. Needs the runtime.
    fn listen(&self) {
        let mut task = self.inner.listener.lock().expect("listener lock");
        if task.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let connect = self.inner.pg.dedicated();
        let waiters = Arc::downgrade(&self.inner.waiters);
        *task = Some(tokio::spawn(listen(connect, waiters)));
    }

    async fn open_now(&self, id: &str, cap: u64) -> io::Result<Arc<LiveLog>> {
        let mut live = self.inner.live.lock().await;
        if let Some(log) = live.get(id) {
            return Ok(log.clone());
        }
        let opened = open_row(&self.inner.pg, id).await.map_err(io_error)?;
        let Some(opened) = opened else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("job {id} has no record: its log cannot be opened"),
            ));
        };
        let Opened {
            len,
            at_line_start,
            attempt,
            node,
        } = opened;
        let path = self.spool_path(id);
        let file = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&path)
            })
            .await
            .map_err(io::Error::other)??
        };
        let ship = Arc::new(Ship {
            id: id.to_string(),
            attempt,
            node,
            base: len,
            spool: path,
            state: Mutex::default(),
            done: Condvar::new(),
            wake: Notify::new(),
        });
        tokio::spawn(ship_task(
            self.inner.pg.clone(),
            ship.clone(),
            self.inner.waiters.clone(),
        ));
        let sink = PgSink { file, ship };
        let log = Arc::new(LiveLog::new(Box::new(sink), len, at_line_start, cap));
        live.insert(id.to_string(), log.clone());
        // Readers waiting for a reopened log look again.
        self.inner.waiters.wake(id);
        Ok(log)
    }

    /// The length of the log's writer on this node, if it is open here.
    async fn local_len(&self, id: &str) -> Option<u64> {
        let log = self.inner.live.lock().await.get(id).cloned();
        log.map(|log| log.len())
    }

    async fn remove_now(&self, id: &str) -> Result<bool, PgError> {
        // Held across the removal, so the log cannot be opened here in between.
        let live = self.inner.live.lock().await;
        if live.contains_key(id) {
            return Ok(false);
        }
        let mut client = self.inner.pg.client().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                "SELECT l.done, j.status FROM logs l LEFT JOIN jobs j ON j.id = l.job \
                 WHERE l.job = $1 FOR UPDATE OF l",
                &[&id],
            )
            .await?;
        if let Some(row) = row {
            let done: bool = row.get(0);
            let status: Option<String> = row.get(1);
            let ended = status.is_none_or(|s| is_terminal(&s));
            if !done && !ended {
                return Ok(false);
            }
        }
        tx.execute("DELETE FROM log_chunks WHERE job = $1", &[&id])
            .await?;
        tx.execute("DELETE FROM logs WHERE job = $1", &[&id])
            .await?;
        tx.commit().await?;
        Ok(true)
    }
}

/// A status as the `jobs.status` column holds it; one the server does not know counts as
/// ended (a newer node's).
fn is_terminal(status: &str) -> bool {
    crate::model::Status::parse(status).is_none_or(|s| s.is_terminal())
}

/// What a writer starts from.
struct Opened {
    len: u64,
    at_line_start: bool,
    attempt: i32,
    node: Option<String>,
}

/// Creates the log's row (or reopens a complete one) and reads where it ends and who holds
/// the job now. A job without a row has no log.
async fn open_row(pg: &Pg, id: &str) -> Result<Option<Opened>, PgError> {
    let mut client = pg.client().await?;
    let tx = client.transaction().await?;
    let Some(job) = tx
        .query_opt("SELECT attempt, node FROM jobs WHERE id = $1", &[&id])
        .await?
    else {
        return Ok(None);
    };
    let (attempt, node): (i32, Option<String>) = (job.get(0), job.get(1));
    let row = tx
        .query_one(
            "INSERT INTO logs (job) VALUES ($1) \
             ON CONFLICT (job) DO UPDATE SET done = false RETURNING len",
            &[&id],
        )
        .await?;
    let len: i64 = row.get(0);
    let at_line_start = if len == 0 {
        true
    } else {
        let last = tx
            .query_opt(
                "SELECT get_byte(bytes, length(bytes) - 1) FROM log_chunks \
                 WHERE job = $1 AND start_offset < $2 ORDER BY start_offset DESC LIMIT 1",
                &[&id, &len],
            )
            .await?;
        last.is_some_and(|r| r.get::<_, i32>(0) == i32::from(b'\n'))
    };
    tx.commit().await?;
    Ok(Some(Opened {
        len: len as u64,
        at_line_start,
        attempt,
        node,
    }))
}

/// What became of one [`append`].
#[derive(Debug, PartialEq, Eq)]
pub enum Append {
    /// These many bytes from the start offset are stored (by this call or an earlier try).
    Stored(u64),
    /// The job is no longer held by this attempt on this node, or its log is gone.
    Fenced,
    /// The stored log does not end where this range starts, and does not hold it either.
    Conflict { len: u64 },
}

/// Stores `bytes` at `start` of job `id`'s log, in one transaction, if the job is still held
/// by `attempt` on `node` and the log ends at `start`; then notifies its readers. A retry of a
/// range already stored (an earlier try whose outcome was unknown) counts as stored.
pub async fn append(
    pg: &Pg,
    id: &str,
    attempt: i32,
    node: Option<&str>,
    start: u64,
    bytes: &[u8],
) -> Result<Append, PgError> {
    let start = start as i64;
    let mut client = pg.client().await?;
    let tx = client.transaction().await?;
    let held = tx
        .query_opt(
            "SELECT l.len FROM logs l JOIN jobs j ON j.id = l.job \
             WHERE l.job = $1 AND j.attempt = $2 AND j.node IS NOT DISTINCT FROM $3 \
             FOR UPDATE OF l",
            &[&id, &attempt, &node],
        )
        .await?;
    let Some(held) = held else {
        return Ok(Append::Fenced);
    };
    let len: i64 = held.get(0);
    if len == start {
        if bytes.is_empty() {
            return Ok(Append::Stored(0));
        }
        tx.execute(
            "INSERT INTO log_chunks (job, start_offset, bytes) VALUES ($1, $2, $3)",
            &[&id, &start, &bytes],
        )
        .await?;
        tx.execute(
            "UPDATE logs SET len = len + $2 WHERE job = $1",
            &[&id, &(bytes.len() as i64)],
        )
        .await?;
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &id])
            .await?;
        tx.commit().await?;
        return Ok(Append::Stored(bytes.len() as u64));
    }
    if len > start {
        let stored = tx
            .query_opt(
                "SELECT bytes FROM log_chunks WHERE job = $1 AND start_offset = $2",
                &[&id, &start],
            )
            .await?;
        if let Some(stored) = stored {
            let stored: Vec<u8> = stored.get(0);
            let n = stored.len().min(bytes.len());
            if !stored.is_empty() && stored[..n] == bytes[..n] {
                return Ok(Append::Stored(n as u64));
            }
        }
    }
    Ok(Append::Conflict { len: len as u64 })
}

/// Marks the log done while the job is held by `attempt` on `node`; false when fenced.
async fn mark_done(pg: &Pg, id: &str, attempt: i32, node: Option<&str>) -> Result<bool, PgError> {
    let client = pg.client().await?;
    let n = client
        .execute(
            "WITH done AS ( \
               UPDATE logs SET done = true FROM jobs j \
               WHERE logs.job = $1 AND j.id = logs.job AND j.attempt = $2 \
                 AND j.node IS NOT DISTINCT FROM $3 RETURNING logs.job) \
             SELECT pg_notify($4, job) FROM done",
            &[&id, &attempt, &node, &CHANNEL],
        )
        .await?;
    Ok(n > 0)
}

/// The writer's side shared with its shipping task.
struct Ship {
    id: String,
    /// The fencing token: the job's attempt and node when the log was opened.
    attempt: i32,
    node: Option<String>,
    /// The stored length when the log was opened: spool offset 0 is log offset `base`.
    base: u64,
    spool: PathBuf,
    state: Mutex<ShipState>,
    /// Signalled when the task has ended (`finished`) and on progress.
    done: Condvar,
    /// Wakes the task: bytes spooled, or the log closes.
    wake: Notify,
}

#[derive(Default)]
struct ShipState {
    /// Bytes in the spool.
    spooled: u64,
    /// Bytes of the spool stored in the database.
    shipped: u64,
    /// Shipping stopped (fenced, a conflict): later writes are dropped.
    stopped: bool,
    /// No more bytes will come: ship, then mark the log done.
    closing: bool,
    /// The writer is gone without finishing: ship what is spooled, then stop.
    dropped: bool,
    /// The task has ended; the spool is removed.
    finished: bool,
}

impl Ship {
    fn state(&self) -> std::sync::MutexGuard<'_, ShipState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct PgSink {
    file: std::fs::File,
    ship: Arc<Ship>,
}

impl LogSink for PgSink {
    /// Spools the bytes and wakes the shipping task; never waits for the database.
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.ship.state().stopped {
            return Ok(());
        }
        self.file.write_all(bytes)?;
        self.ship.state().spooled += bytes.len() as u64;
        self.ship.wake.notify_one();
        Ok(())
    }

    /// Waits until the shipping task has shipped everything (or was fenced, or gave up
    /// through an outage) and marked the log done.
    fn finish(&mut self) -> io::Result<()> {
        self.ship.state().closing = true;
        self.ship.wake.notify_one();
        let deadline = Instant::now() + GIVE_UP * 2 + Duration::from_secs(10);
        let mut state = self.ship.state();
        while !state.finished {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the job's log was not shipped to the database in time",
                ));
            }
            state = self
                .ship
                .done
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        if state.shipped < state.spooled {
            return Err(io::Error::other(format!(
                "{} bytes of the job's log could not be stored",
                state.spooled - state.shipped
            )));
        }
        Ok(())
    }
}

impl Drop for PgSink {
    fn drop(&mut self) {
        self.ship.state().dropped = true;
        self.ship.wake.notify_one();
    }
}

/// Ships a writer's spool until it closes (or is dropped, fenced or gives up), then removes
/// the spool.
async fn ship_task(pg: Pg, ship: Arc<Ship>, waiters: Arc<Waiters>) {
    let id = ship.id.clone();
    match std::fs::File::open(&ship.spool) {
        Ok(spool) => ship_spool(&pg, &ship, &spool, &waiters).await,
        Err(e) => {
            tracing::error!(job = %id, error = %e, "cannot read the job's log spool");
            ship.state().stopped = true;
        }
    }
    if let Err(e) = tokio::fs::remove_file(&ship.spool).await {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(job = %id, error = %e, "cannot remove the job's log spool");
        }
    }
    ship.state().finished = true;
    ship.done.notify_all();
    waiters.wake(&id);
}

async fn ship_spool(pg: &Pg, ship: &Ship, spool: &std::fs::File, waiters: &Waiters) {
    let id = ship.id.as_str();
    let node = ship.node.as_deref();
    let mut backoff = BACKOFF_MIN;
    // Since when the database fails us, and since when the log closes (its give-up clock
    // starts at the later of the two).
    let mut failing: Option<Instant> = None;
    let mut closing_since: Option<Instant> = None;
    let mut warned = false;
    loop {
        let (spooled, shipped, closing, dropped) = {
            let s = ship.state();
            (s.spooled, s.shipped, s.closing, s.dropped)
        };
        if closing {
            closing_since.get_or_insert_with(Instant::now);
        }
        let give_up = |failing: Option<Instant>| {
            let (Some(failing), Some(closing)) = (failing, closing_since) else {
                return false;
            };
            failing.max(closing).elapsed() >= GIVE_UP
        };
        let outcome = if shipped < spooled {
            let n = (spooled - shipped).min(SHIP_CHUNK as u64) as usize;
            let mut buf = vec![0u8; n];
            if let Err(e) = spool.read_exact_at(&mut buf, shipped) {
                tracing::error!(job = %id, error = %e, "cannot read the job's log spool");
                ship.state().stopped = true;
                return;
            }
            match append(pg, id, ship.attempt, node, ship.base + shipped, &buf).await {
                Ok(Append::Stored(k)) => {
                    ship.state().shipped += k;
                    ship.done.notify_all();
                    waiters.wake(id);
                    Ok(())
                }
                Ok(Append::Fenced) => {
                    tracing::warn!(job = %id, attempt = ship.attempt,
                        "the job is no longer held by this worker: its log output here is dropped");
                    ship.state().stopped = true;
                    return;
                }
                Ok(Append::Conflict { len }) => {
                    tracing::error!(job = %id, len, at = ship.base + shipped,
                        "the job's stored log does not end where this worker's output continues: dropped");
                    ship.state().stopped = true;
                    return;
                }
                Err(e) => Err(e),
            }
        } else if closing {
            match mark_done(pg, id, ship.attempt, node).await {
                Ok(true) => {
                    waiters.wake(id);
                    return;
                }
                Ok(false) => {
                    tracing::warn!(job = %id, attempt = ship.attempt,
                        "the job is no longer held by this worker: its log is not marked complete");
                    return;
                }
                Err(e) => Err(e),
            }
        } else if dropped {
            return;
        } else {
            ship.wake.notified().await;
            continue;
        };
        match outcome {
            Ok(()) => {
                backoff = BACKOFF_MIN;
                failing = None;
                warned = false;
            }
            Err(e) => {
                failing.get_or_insert_with(Instant::now);
                if give_up(failing) {
                    let left = spooled - shipped;
                    tracing::error!(job = %id, error = %e, bytes_lost = left,
                        "giving up storing the job's log in the database");
                    ship.state().stopped = true;
                    return;
                }
                if !warned {
                    warned = true;
                    tracing::warn!(job = %id, error = %e, outage = e.is_unavailable(),
                        "cannot store the job's log in the database yet: retrying");
                }
                // A close or more bytes do not cut the back-off short: the database is away.
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// The readers of this process waiting for more of a log, by job id.
#[derive(Default)]
struct Waiters(Mutex<HashMap<String, Weak<Notify>>>);

impl Waiters {
    fn get(&self, id: &str) -> Arc<Notify> {
        let mut map = self.0.lock().expect("waiters lock");
        if let Some(n) = map.get(id).and_then(Weak::upgrade) {
            return n;
        }
        if map.len() >= 256 {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let n = Arc::new(Notify::new());
        map.insert(id.to_string(), Arc::downgrade(&n));
        n
    }

    fn wake(&self, id: &str) {
        let n = self
            .0
            .lock()
            .expect("waiters lock")
            .get(id)
            .and_then(Weak::upgrade);
        if let Some(n) = n {
            n.notify_waiters();
        }
    }

    fn wake_all(&self) {
        let all: Vec<Arc<Notify>> = self
            .0
            .lock()
            .expect("waiters lock")
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for n in all {
            n.notify_waiters();
        }
    }
}

/// Listens for `ci_log` notifications on a connection of its own and wakes the readers of
/// this process; reconnects with back-off while the database is away. Ends once the store
/// is gone.
async fn listen(connect: crate::pg::Dedicated, waiters: Weak<Waiters>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        match connect.connect().await {
            Ok((client, mut connection)) => {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
                let driver = tokio::spawn(async move {
                    let mut messages =
                        futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(message) = messages.next().await {
                        match message {
                            Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                                if tx.send(n.payload().to_string()).is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::debug!(error = %e, "the log notification connection ended");
                                return;
                            }
                        }
                    }
                });
                match client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
                    Ok(()) => {
                        backoff = BACKOFF_MIN;
                        // What was missed while not listening: every reader looks again.
                        match waiters.upgrade() {
                            Some(w) => w.wake_all(),
                            None => return,
                        }
                        while let Some(id) = rx.recv().await {
                            match waiters.upgrade() {
                                Some(w) => w.wake(&id),
                                None => return,
                            }
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot listen for log notifications");
                    }
                }
                driver.abort();
            }
            Err(e) => tracing::debug!(error = %e, "cannot connect to listen for log notifications"),
        }
        if waiters.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// A reader of one log from the database.
struct Follower {
    logs: PgLogs,
    id: String,
    pos: u64,
    /// Chunks fetched, not yet yielded.
    ready: VecDeque<Bytes>,
    notify: Arc<Notify>,
    /// When this reader first saw the job ended with its log not done.
    ended_seen: Option<Instant>,
    started: bool,
}

/// Where a log stands, for a reader at what is stored.
struct Standing {
    /// `None`: no log row.
    log: Option<(u64, bool)>,
    /// `None`: no job row.
    status: Option<String>,
    /// How long ago the job ended, by the database's clock and the job's record.
    ended_ms_ago: Option<i64>,
}

impl Follower {
    async fn next(&mut self) -> io::Result<Option<Bytes>> {
        if !self.started {
            self.started = true;
            self.logs.listen();
        }
        let mut backoff = BACKOFF_MIN;
        let mut failing: Option<Instant> = None;
        let mut again = 0;
        loop {
            if let Some(bytes) = self.ready.pop_front() {
                self.pos += bytes.len() as u64;
                return Ok(Some(bytes));
            }
            let notify = self.notify.clone();
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.step().await {
                Ok(Step::Read) => {
                    backoff = BACKOFF_MIN;
                    failing = None;
                }
                Ok(Step::Again) => {
                    // Stored since the read: look again at once, but never spin (a log
                    // whose chunks do not follow on, which no writer here makes).
                    again += 1;
                    if again > 1 {
                        tokio::time::sleep(POLL).await;
                    }
                }
                Ok(Step::End) => return Ok(None),
                Ok(Step::Wait) => {
                    backoff = BACKOFF_MIN;
                    failing = None;
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep(POLL) => {}
                    }
                }
                Err(e) if e.is_unavailable() => {
                    let since = *failing.get_or_insert_with(Instant::now);
                    if since.elapsed() >= READER_PATIENCE {
                        return Err(io_error(e));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Err(e) => return Err(io_error(e)),
            }
        }
    }

    /// Fetches what is stored from `pos`, or decides whether to wait or end.
    async fn step(&mut self) -> Result<Step, PgError> {
        let client = self.logs.inner.pg.client().await?;
        let pos = self.pos as i64;
        let rows = client
            .query(
                "SELECT start_offset, bytes FROM log_chunks \
                 WHERE job = $1 AND start_offset >= coalesce( \
                   (SELECT max(start_offset) FROM log_chunks WHERE job = $1 AND start_offset <= $2), 0) \
                 ORDER BY start_offset LIMIT $3",
                &[&self.id, &pos, &READ_ROWS],
            )
            .await?;
        let mut at = self.pos;
        for row in rows {
            let start: i64 = row.get(0);
            let bytes: Vec<u8> = row.get(1);
            let (start, end) = (start as u64, start as u64 + bytes.len() as u64);
            if end <= at {
                continue;
            }
            if start > at {
                // Not contiguous with what was read: a log removed and written anew.
                break;
            }
            let mut bytes = Bytes::from(bytes);
            let skip = (at - start) as usize;
            let bytes = bytes.split_off(skip);
            at = end;
            self.ready.push_back(bytes);
        }
        if !self.ready.is_empty() {
            return Ok(Step::Read);
        }
        let row = client
            .query_one(
                "SELECT l.len, l.done, j.status, \
                   (extract(epoch FROM now()) * 1000)::bigint - (j.record->>'finished_ms')::bigint \
                 FROM (SELECT $1::text AS id) k \
                 LEFT JOIN logs l ON l.job = k.id LEFT JOIN jobs j ON j.id = k.id",
                &[&self.id],
            )
            .await?;
        let standing = Standing {
            log: row
                .get::<_, Option<i64>>(0)
                .map(|len| (len as u64, row.get::<_, Option<bool>>(1).unwrap_or(false))),
            status: row.get(2),
            ended_ms_ago: row.get(3),
        };
        Ok(self.decide(standing))
    }

    fn decide(&mut self, s: Standing) -> Step {
        let ended = s.status.as_deref().is_none_or(is_terminal);
        match s.log {
            Some((len, done)) => {
                if self.pos < len {
                    // Stored since the read.
                    return Step::Again;
                }
                if done {
                    return Step::End;
                }
                if s.status.is_none() {
                    return Step::End;
                }
                if ended {
                    let seen = *self.ended_seen.get_or_insert_with(Instant::now);
                    let long_ago = s
                        .ended_ms_ago
                        .is_some_and(|ms| ms >= ABANDONED.as_millis() as i64);
                    if long_ago || seen.elapsed() >= ABANDONED {
                        return Step::End;
                    }
                }
                Step::Wait
            }
            None if ended => Step::End,
            None => Step::Wait,
        }
    }
}

enum Step {
    /// Chunks are ready.
    Read,
    /// Look again at once.
    Again,
    /// Wait for a notification or the poll.
    Wait,
    End,
}

#[async_trait]
impl LogStore for PgLogs {
    async fn open_live(&self, id: &str, cap: u64) -> io::Result<Arc<LiveLog>> {
        self.open_now(id, cap).await
    }

    async fn close(&self, id: &str) {
        let log = self.inner.live.lock().await.remove(id);
        if let Some(log) = log {
            let finished = tokio::task::spawn_blocking(move || log.finish()).await;
            match finished {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(job = %id, error = %e, "cannot store the whole job's log")
                }
                Err(e) => tracing::error!(job = %id, error = %e, "closing the job's log panicked"),
            }
        }
    }

    async fn remove(&self, id: &str) -> io::Result<bool> {
        self.remove_now(id).await.map_err(io_error)
    }

    fn stream(&self, id: &str, offset: u64) -> LogStream {
        let follower = Follower {
            logs: self.clone(),
            id: id.to_string(),
            pos: offset,
            ready: VecDeque::new(),
            notify: self.inner.waiters.get(id),
            ended_seen: None,
            started: false,
        };
        Box::pin(futures_util::stream::unfold(
            Some(follower),
            |follower| async move {
                let mut follower = follower?;
                match follower.next().await {
                    Ok(Some(bytes)) => Some((Ok(bytes), Some(follower))),
                    Ok(None) => None,
                    Err(e) => Some((Err(e), None)),
                }
            },
        ))
    }

    /// What is stored, or what this node's writer has taken if more (the rest is on its way:
    /// a reader at an offset up to there waits for it).
    async fn len(&self, id: &str) -> io::Result<u64> {
        let local = self.local_len(id).await;
        let client = self.inner.pg.client().await.map_err(io_error)?;
        let row = client
            .query_opt("SELECT len FROM logs WHERE job = $1", &[&id])
            .await
            .map_err(|e| io_error(e.into()))?;
        let stored = row.map_or(0, |r| r.get::<_, i64>(0) as u64);
        Ok(stored.max(local.unwrap_or(0)))
    }

    /// One query for the whole listing.
    async fn lens(&self, ids: &[String]) -> Vec<io::Result<u64>> {
        let found = async {
            let client = self.inner.pg.client().await?;
            let rows = client
                .query("SELECT job, len FROM logs WHERE job = ANY($1)", &[&ids])
                .await?;
            Ok::<_, PgError>(
                rows.into_iter()
                    .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64))
                    .collect::<HashMap<String, u64>>(),
            )
        }
        .await;
        match found {
            Ok(lens) => {
                let mut out = Vec::with_capacity(ids.len());
                for id in ids {
                    let local = self.local_len(id).await.unwrap_or(0);
                    out.push(Ok(lens.get(id).copied().unwrap_or(0).max(local)));
                }
                out
            }
            Err(e) => {
                let e = e.to_string();
                ids.iter()
                    .map(|_| Err(io::Error::other(e.clone())))
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::conformance::{self, collect};
    use rand::{Rng, SeedableRng};

    /// A new empty database of the shared test server.
    async fn database_url() -> String {
        tokio::task::spawn_blocking(|| ci_e2e::postgres::shared().fresh_database())
            .await
            .unwrap()
    }

    async fn database() -> Pg {
        Pg::connect(&database_url().await).await.unwrap()
    }

    async fn job(pg: &Pg, id: &str, status: &str, attempt: i32, node: Option<&str>) {
        pg.client()
            .await
            .unwrap()
            .execute(
                "INSERT INTO jobs (id, seq, owner, status, record, attempt, node) \
                 VALUES ($1, 0, 'u', $2, '{}'::jsonb, $3, $4)",
                &[&id, &status, &attempt, &node],
            )
            .await
            .unwrap();
    }

    async fn sql(pg: &Pg, statement: &str) {
        pg.client()
            .await
            .unwrap()
            .batch_execute(statement)
            .await
            .unwrap();
    }

    /// What the database holds of a log: its chunks joined, and whether it is done.
    async fn stored(pg: &Pg, id: &str) -> (Vec<u8>, Option<bool>) {
        let client = pg.client().await.unwrap();
        let rows = client
            .query(
                "SELECT bytes FROM log_chunks WHERE job = $1 ORDER BY start_offset",
                &[&id],
            )
            .await
            .unwrap();
        let bytes = rows.iter().flat_map(|r| r.get::<_, Vec<u8>>(0)).collect();
        let done = client
            .query_opt("SELECT done FROM logs WHERE job = $1", &[&id])
            .await
            .unwrap()
            .map(|r| r.get(0));
        (bytes, done)
    }

    /// The checks every store passes. Their jobs have records held by attempt 1 on node
    /// `n1`, in a status that has ended: the suite removes and reads logs as a store alone
    /// would, and a reader of a missing log of a job that has not ended waits for it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn pg_logs_conform() {
        let spool = tempfile::tempdir().unwrap();
        let made = std::sync::atomic::AtomicUsize::new(0);
        conformance::run_async(|| {
            let n = made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = spool.path().join(format!("spool{n}"));
            async move {
                let pg = database().await;
                for id in conformance::JOB_IDS {
                    job(&pg, id, "passed", 1, Some("n1")).await;
                }
                PgLogs::new(pg, dir).unwrap()
            }
        })
        .await;
    }

    /// Text with characters of one to four bytes, and newlines.
    fn text(len: usize, rng: &mut impl Rng) -> Vec<u8> {
        let pieces = ["a", "line ", "é", "€", "𝄞", "\n", "ß\n", "日本語"];
        let mut out = Vec::with_capacity(len + 16);
        while out.len() < len {
            out.extend_from_slice(pieces[rng.random_range(0..pieces.len())].as_bytes());
        }
        out
    }

    /// Reads job `id`'s log from `logs`, dropping the stream at random offsets and
    /// reconnecting there, until it ends.
    async fn reconnecting(logs: PgLogs, id: &str, seed: u64) -> Vec<u8> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut out = Vec::new();
        loop {
            let mut stream = logs.stream(id, out.len() as u64);
            let stop_after = out.len() + rng.random_range(1..200_000);
            loop {
                match stream.next().await {
                    Some(chunk) => out.extend_from_slice(&chunk.unwrap()),
                    None => return out,
                }
                if out.len() >= stop_after {
                    // Cut mid-chunk too: keep only part of what was read.
                    let keep = rng.random_range(stop_after.min(out.len())..=out.len());
                    out.truncate(keep);
                    break;
                }
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_reader_on_another_node_gets_the_writers_bytes_exactly() {
        let url = database_url().await;
        let pg = Pg::connect(&url).await.unwrap();
        job(&pg, "x", "running", 1, Some("n1")).await;
        let dirs = tempfile::tempdir().unwrap();
        let worker = PgLogs::new(pg.clone(), dirs.path().join("worker")).unwrap();
        // Another node: its own pool, its own listener.
        let api = PgLogs::new(Pg::connect(&url).await.unwrap(), dirs.path().join("api")).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let expected = text(1 << 20, &mut rng);
        let log = worker.open_live("x", u64::MAX).await.unwrap();
        let whole = tokio::spawn({
            let api = api.clone();
            async move { collect(&api, "x", 0).await }
        });
        let resuming = tokio::spawn(reconnecting(api.clone(), "x", 11));
        let writer = {
            let expected = expected.clone();
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(3);
                let mut at = 0;
                while at < expected.len() {
                    let n = rng.random_range(1..=9000).min(expected.len() - at);
                    log.append(&expected[at..at + n]).unwrap();
                    at += n;
                    if rng.random_range(0..20) == 0 {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
            })
        };
        writer.join().unwrap();
        worker.close("x").await;
        let whole = whole.await.unwrap();
        assert_eq!(whole.len(), expected.len());
        assert!(whole == expected, "the follower's bytes differ");
        let resumed = resuming.await.unwrap();
        assert!(
            resumed == expected,
            "the reconnecting follower's bytes differ"
        );
        // Done, and read back whole from any offset, on either node.
        assert_eq!(stored(&pg, "x").await, (expected.clone(), Some(true)));
        for offset in [0, 1, 2, 3, 4, 300_001, expected.len() - 1, expected.len()] {
            let got = collect(&api, "x", offset as u64).await;
            assert!(got == expected[offset..], "from {offset}");
        }
        assert_eq!(api.len("x").await.unwrap(), expected.len() as u64);
        // The spool is gone once shipped.
        assert!(!dirs.path().join("worker/x.spool").exists());
        let lens: Vec<u64> = api
            .lens(&["missing".to_string(), "x".to_string()])
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(lens, [0, expected.len() as u64]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fenced_writer_stores_nothing_more() {
        let pg = database().await;
        job(&pg, "f", "running", 1, Some("n1")).await;
        let dir = tempfile::tempdir().unwrap();
        let logs = PgLogs::new(pg.clone(), dir.path().join("spool")).unwrap();
        let log = logs.open_live("f", u64::MAX).await.unwrap();
        log.append(b"before\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while stored(&pg, "f").await.0 != b"before\n" {
            assert!(Instant::now() < deadline, "never shipped");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The job was taken away and claimed again (by another worker).
        sql(
            &pg,
            "UPDATE jobs SET attempt = 2, node = 'n2' WHERE id = 'f'",
        )
        .await;
        log.append(b"after\n").unwrap();
        log.note("the end").unwrap();
        tokio::time::timeout(Duration::from_secs(20), logs.close("f"))
            .await
            .expect("finish returns");
        assert_eq!(stored(&pg, "f").await, (b"before\n".to_vec(), Some(false)));
        assert!(!dir.path().join("spool/f.spool").exists());
    }

    #[tokio::test]
    async fn appends_are_fenced_offset_checked_and_idempotent() {
        let pg = database().await;
        job(&pg, "i", "running", 1, Some("n1")).await;
        sql(&pg, "INSERT INTO logs (job) VALUES ('i')").await;
        let n1 = Some("n1");
        assert_eq!(
            append(&pg, "i", 1, n1, 0, b"hello").await.unwrap(),
            Append::Stored(5)
        );
        // A retry of the same range (its outcome was unknown) stores nothing twice.
        assert_eq!(
            append(&pg, "i", 1, n1, 0, b"hello").await.unwrap(),
            Append::Stored(5)
        );
        // A retry that reads further in the spool: what is stored counts.
        assert_eq!(
            append(&pg, "i", 1, n1, 0, b"hello world").await.unwrap(),
            Append::Stored(5)
        );
        assert_eq!(
            append(&pg, "i", 1, n1, 5, b" world").await.unwrap(),
            Append::Stored(6)
        );
        assert_eq!(stored(&pg, "i").await.0, b"hello world");
        let chunks: i64 = pg
            .client()
            .await
            .unwrap()
            .query_one("SELECT count(*) FROM log_chunks WHERE job = 'i'", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(chunks, 2);
        // Other bytes at a stored offset, or a gap: refused.
        assert_eq!(
            append(&pg, "i", 1, n1, 0, b"HELLO").await.unwrap(),
            Append::Conflict { len: 11 }
        );
        assert_eq!(
            append(&pg, "i", 1, n1, 20, b"x").await.unwrap(),
            Append::Conflict { len: 11 }
        );
        // Another attempt, another node, or no log: fenced.
        assert_eq!(
            append(&pg, "i", 2, n1, 11, b"x").await.unwrap(),
            Append::Fenced
        );
        assert_eq!(
            append(&pg, "i", 1, Some("n2"), 11, b"x").await.unwrap(),
            Append::Fenced
        );
        assert_eq!(
            append(&pg, "nolog", 1, n1, 0, b"x").await.unwrap(),
            Append::Fenced
        );
        assert_eq!(stored(&pg, "i").await.0, b"hello world");
        let len: i64 = pg
            .client()
            .await
            .unwrap()
            .query_one("SELECT len FROM logs WHERE job = 'i'", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(len, 11);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_end_when_the_job_did_without_its_log() {
        let pg = database().await;
        let logs = PgLogs::new(pg.clone(), tempfile::tempdir().unwrap().keep()).unwrap();
        // A job cancelled while queued: no log; a job that does not exist.
        job(&pg, "cancelled", "cancelled", 0, None).await;
        assert_eq!(collect(&logs, "cancelled", 0).await, b"");
        assert_eq!(collect(&logs, "nojob", 0).await, b"");
        // A queued job whose log is not there yet: waits, until the job ends.
        job(&pg, "queued", "queued", 0, None).await;
        let waiting = tokio::spawn({
            let logs = logs.clone();
            async move { collect(&logs, "queued", 0).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished());
        sql(
            &pg,
            "UPDATE jobs SET status = 'cancelled' WHERE id = 'queued'",
        )
        .await;
        assert_eq!(waiting.await.unwrap(), b"");
        // A worker that died after recording the job's end, before closing its log.
        job(&pg, "dead", "lost", 1, Some("n1")).await;
        sql(
            &pg,
            "UPDATE jobs SET record = jsonb_build_object('finished_ms', \
               (extract(epoch FROM now()) * 1000)::bigint - 60000) WHERE id = 'dead'; \
             INSERT INTO logs (job, len) VALUES ('dead', 3); \
             INSERT INTO log_chunks VALUES ('dead', 0, 'abc'::bytea)",
        )
        .await;
        assert_eq!(collect(&logs, "dead", 0).await, b"abc");
        // Its log is not removed while it runs, but once it ended.
        job(&pg, "running", "running", 1, Some("n1")).await;
        sql(&pg, "INSERT INTO logs (job) VALUES ('running')").await;
        assert!(!logs.remove("running").await.unwrap());
        sql(
            &pg,
            "UPDATE jobs SET status = 'failed' WHERE id = 'running'",
        )
        .await;
        assert!(logs.remove("running").await.unwrap());
        assert!(logs.remove("dead").await.unwrap());
        assert_eq!(stored(&pg, "dead").await, (Vec::new(), None));
    }

    #[tokio::test]
    async fn spools_are_private_and_a_previous_processs_are_removed() {
        use std::os::unix::fs::PermissionsExt;
        let pg = database().await;
        job(&pg, "s", "running", 1, Some("n1")).await;
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        std::fs::create_dir(&spool).unwrap();
        std::fs::write(spool.join("old.spool"), "lost").unwrap();
        std::fs::write(spool.join("other.log"), "not ours").unwrap();
        let logs = PgLogs::new(pg.clone(), spool.clone()).unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&spool), 0o700);
        assert!(!spool.join("old.spool").exists());
        assert!(spool.join("other.log").exists());
        let log = logs.open_live("s", u64::MAX).await.unwrap();
        log.append(b"secret\n").unwrap();
        assert_eq!(mode(&spool.join("s.spool")), 0o600);
        logs.close("s").await;
        assert!(!spool.join("s.spool").exists());
        assert_eq!(stored(&pg, "s").await, (b"secret\n".to_vec(), Some(true)));
    }

    #[tokio::test]
    async fn a_log_of_a_job_without_a_record_cannot_be_opened() {
        let pg = database().await;
        let logs = PgLogs::new(pg.clone(), tempfile::tempdir().unwrap().keep()).unwrap();
        let e = logs.open_live("ghost", 100).await.err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert_eq!(stored(&pg, "ghost").await, (Vec::new(), None));
    }
    /// The database goes away while a job writes and a reader on another node follows:
    /// writes do not wait, nothing is lost, the reader does not fail, and the log completes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn an_outage_loses_nothing_and_blocks_no_write() {
        let server = tokio::task::spawn_blocking(ci_e2e::postgres::TestPostgres::start)
            .await
            .unwrap();
        let server = Arc::new(server);
        let url = {
            let server = server.clone();
            tokio::task::spawn_blocking(move || server.fresh_database())
                .await
                .unwrap()
        };
        let pg = Pg::connect(&url).await.unwrap();
        job(&pg, "o", "running", 1, Some("n1")).await;
        let dirs = tempfile::tempdir().unwrap();
        let worker = PgLogs::new(pg.clone(), dirs.path().join("worker")).unwrap();
        let api = PgLogs::new(Pg::connect(&url).await.unwrap(), dirs.path().join("api")).unwrap();
        let log = worker.open_live("o", u64::MAX).await.unwrap();
        let reader = tokio::spawn({
            let api = api.clone();
            async move {
                let mut out = Vec::new();
                let mut s = api.stream("o", 0);
                while let Some(chunk) = s.next().await {
                    out.extend_from_slice(&chunk.expect("no error through the outage"));
                }
                out
            }
        });
        let mut expected = Vec::new();
        for i in 0..100 {
            let line = format!("before {i}\n");
            log.append(line.as_bytes()).unwrap();
            expected.extend_from_slice(line.as_bytes());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        {
            let server = server.clone();
            tokio::task::spawn_blocking(move || server.stop_immediate())
                .await
                .unwrap();
        }
        let started = Instant::now();
        for i in 0..1000 {
            let line = format!("during {i}\n");
            log.append(line.as_bytes()).unwrap();
            expected.extend_from_slice(line.as_bytes());
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "writes waited for the database"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        {
            let server = server.clone();
            tokio::task::spawn_blocking(move || server.start_again())
                .await
                .unwrap();
        }
        log.note("after").unwrap();
        expected.extend_from_slice(b"==> after\n");
        tokio::time::timeout(Duration::from_secs(30), worker.close("o"))
            .await
            .expect("closed");
        assert_eq!(stored(&pg, "o").await, (expected.clone(), Some(true)));
        let read = tokio::time::timeout(Duration::from_secs(30), reader)
            .await
            .expect("the reader ends")
            .unwrap();
        assert!(read == expected, "the reader's bytes differ");
    }
}
