//! Job logs, as a trait: the job manager, the API and retention see only [`LogStore`].
//! Today's implementation is [`FileLogs`], one append-only file per job; [`MemoryLogs`] serves
//! fast tests; a store that several servers share (scale-out) is another. One suite
//! (`conformance`, in the tests) states what every implementation does, and each runs it.
//!
//! A log has one writer, the job's [`LiveLog`], from [`LogStore::open_live`] until
//! [`LogStore::close`], and any number of readers ([`LogStore::stream`]) that follow it from any
//! byte offset and see exactly the stored bytes. A reader never gets bytes from the writer's
//! memory, only from the store: what a client prints is by construction a slice of the stored
//! log, so a reconnect at offset N resumes with nothing lost and nothing repeated.
//!
//! The writer is one concrete type over a narrow backend seam, [`LogSink`], rather than a
//! trait of its own. What a writer decides (the cap past which the job's output is dropped,
//! server notes that pass the cap and start on a line of their own, the length) is the log's
//! format, the same whatever stores it: written once here, it cannot drift between backends,
//! and a backend only stores bytes, tells its readers, and makes the log durable at the end.
//! The executor's code names `LiveLog` and calls it on every chunk of output, which a trait
//! object would not simplify.
//!
//! [`LiveLog::append`] and [`LiveLog::note`] are synchronous: they hand a chunk to the
//! backend in the order the job wrote it (the files backend writes to the page cache, which
//! does not wait for the disk); a remote backend would buffer and ship in the background.
//! Everything else that touches storage is async and, for files, runs on the blocking pool:
//! opening, the `fsync` at the end, removal, lengths.
//!
//! Logs on disk are the server's user's only (directory 0700, files 0600): a job's output may
//! hold what its owner would not show other local users. `retention` removes finished ones.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;

/// The bytes of one log, from some offset on.
pub type LogStream = BoxStream<'static, io::Result<Bytes>>;

/// Where job logs live.
#[async_trait]
pub trait LogStore: Send + Sync + 'static {
    /// Opens the log of a job that is about to produce output, creating it or appending to
    /// what is stored; job output past `cap` bytes is dropped (see [`LiveLog::append`]). While
    /// the log is open, this returns the same writer.
    async fn open_live(&self, id: &str, cap: u64) -> io::Result<Arc<LiveLog>>;

    /// The log is complete: what was written is made durable, its readers end once they
    /// reach its end, and the store forgets its writer. Nothing happens to a log that is not
    /// open.
    async fn close(&self, id: &str);

    /// Removes the stored log of a job that has ended (retention, a refused submission). A
    /// log that is still open is left alone and `Ok(false)` returned; a log that is already
    /// gone counts as removed.
    async fn remove(&self, id: &str) -> io::Result<bool>;

    /// The bytes of a job's log from `offset` on: first what is stored, then, while the log
    /// is open, what is written next; ends when the log is complete. A log that is not open
    /// ends at its stored end (at once when `offset` is past it, or the log is missing); an
    /// open log at an offset past its end waits for the bytes from there on.
    fn stream(&self, id: &str, offset: u64) -> LogStream;

    /// Bytes stored in a job's log; 0 when there is none.
    async fn len(&self, id: &str) -> io::Result<u64>;

    /// [`LogStore::len`] of many logs at once (a listing of jobs), in the order of `ids`.
    async fn lens(&self, ids: &[String]) -> Vec<io::Result<u64>> {
        let mut lens = Vec::with_capacity(ids.len());
        for id in ids {
            lens.push(self.len(id).await);
        }
        lens
    }
}

/// What happened to bytes handed to [`LiveLog::append`].
#[derive(Debug, PartialEq, Eq)]
pub enum Appended {
    All,
    /// The log reached its cap: the bytes past it were dropped.
    CapReached,
}

/// Where a [`LiveLog`] puts its bytes: the part of a writer a backend provides. Called with
/// the writer's lock held, so one call at a time, in order.
pub trait LogSink: Send {
    /// Stores `bytes` at the end of the log, then lets its readers see them: a reader that
    /// learns of the new length can read the bytes.
    fn write(&mut self, bytes: &[u8]) -> io::Result<()>;

    /// No more bytes will come: makes the log durable, then lets its readers end once they
    /// reach its end (also when it could not be made durable). Blocking.
    fn finish(&mut self) -> io::Result<()>;
}

/// The writing side of one job's log.
pub struct LiveLog {
    writer: Mutex<Writer>,
    /// Bytes past which the job's output is no longer stored.
    cap: u64,
}

struct Writer {
    sink: Box<dyn LogSink>,
    len: u64,
    /// Whether the log ends with a newline (or is empty): server lines start on a line of
    /// their own even when the job's output did not end one.
    at_line_start: bool,
}

impl LiveLog {
    /// A writer that appends through `sink` to a log of `len` bytes, whose last byte is a
    /// newline or not (`at_line_start`, true for an empty log). A log already past `cap`
    /// keeps what it holds.
    pub fn new(sink: Box<dyn LogSink>, len: u64, at_line_start: bool, cap: u64) -> LiveLog {
        LiveLog {
            writer: Mutex::new(Writer {
                sink,
                len,
                at_line_start,
            }),
            cap: cap.max(len),
        }
    }

    /// Appends the job's output, up to the cap.
    pub fn append(&self, data: &[u8]) -> io::Result<Appended> {
        let mut w = self.writer.lock().expect("log lock");
        let room = self.cap.saturating_sub(w.len);
        let take = (data.len() as u64).min(room) as usize;
        if take > 0 {
            w.sink.write(&data[..take])?;
            w.len += take as u64;
            w.at_line_start = data[take - 1] == b'\n';
        }
        Ok(if take < data.len() {
            Appended::CapReached
        } else {
            Appended::All
        })
    }

    /// Appends a line written by the server itself (not the job), past any cap.
    pub fn note(&self, line: &str) -> io::Result<()> {
        let mut w = self.writer.lock().expect("log lock");
        let text = format!("{}==> {line}\n", if w.at_line_start { "" } else { "\n" });
        w.sink.write(text.as_bytes())?;
        w.len += text.len() as u64;
        w.at_line_start = true;
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.writer.lock().expect("log lock").len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// No more bytes will come (see [`LogSink::finish`]); stores call it from
    /// [`LogStore::close`]. Blocking.
    pub fn finish(&self) -> io::Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        w.sink.finish()
    }
}

/// What readers of an open log need to know: how many bytes are stored, and whether more can
/// come. Shared by the backends in this process.
#[derive(Clone, Copy, Debug, Default)]
struct Progress {
    len: u64,
    done: bool,
}

/// An open log, as its store keeps it: the writer, and what its readers subscribe to.
struct Open {
    log: Arc<LiveLog>,
    progress: watch::Receiver<Progress>,
}

/// Where a follower reads the stored bytes.
#[async_trait]
trait Chunks: Send + 'static {
    /// The next stored bytes (at most [`CHUNK`]) from `pos`, where the previous read ended;
    /// empty at the end of what is stored, or when nothing is.
    async fn read(&mut self, pos: u64) -> io::Result<Bytes>;
}

const CHUNK: usize = 64 * 1024;

/// The stream of a log's bytes from `offset`, following `progress` while the log is open
/// (`None`: it is complete, read to the end).
fn follow(
    chunks: impl Chunks,
    offset: u64,
    progress: Option<watch::Receiver<Progress>>,
) -> LogStream {
    let reader = Follower {
        chunks,
        pos: offset,
        progress,
    };
    Box::pin(futures_util::stream::unfold(
        Some(reader),
        |reader| async move {
            let mut reader = reader?;
            match reader.next().await {
                Ok(Some(bytes)) => Some((Ok(bytes), Some(reader))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        },
    ))
}

struct Follower<C> {
    chunks: C,
    pos: u64,
    /// `None` once the log is known to be complete.
    progress: Option<watch::Receiver<Progress>>,
}

impl<C: Chunks> Follower<C> {
    async fn next(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            // Look at the progress *before* reading, so a write that lands after the read is
            // still seen as a change below.
            let seen = self.progress.as_mut().map(|rx| *rx.borrow_and_update());
            let chunk = self.chunks.read(self.pos).await?;
            if !chunk.is_empty() {
                self.pos += chunk.len() as u64;
                return Ok(Some(chunk));
            }
            let Some(seen) = seen else { return Ok(None) };
            if seen.done && self.pos >= seen.len {
                return Ok(None);
            }
            if self.pos < seen.len {
                continue;
            }
            let rx = self.progress.as_mut().expect("checked above");
            if rx.changed().await.is_err() {
                // The writer is gone: the log is complete; drain it and stop.
                self.progress = None;
            }
        }
    }
}

/// Runs file work on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("log task failed: {e}")))?
}

/// Logs as files: `<dir>/<id>.log`, appended to while the job runs. Cheap to clone.
#[derive(Clone)]
pub struct FileLogs {
    dir: PathBuf,
    live: Arc<Mutex<HashMap<String, Open>>>,
}

impl FileLogs {
    /// Opens the log directory, creating it private or tightening an older one (see
    /// [`crate::perms`]). Blocking.
    pub fn new(dir: PathBuf) -> io::Result<FileLogs> {
        crate::perms::private_dir(&dir)?;
        Ok(FileLogs {
            dir,
            live: Arc::default(),
        })
    }

    pub fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.log"))
    }

    /// [`LogStore::open_live`], blocking. The lock is held across the open, so that a
    /// removal cannot come in between (see [`Self::remove_now`]).
    fn open_now(&self, id: &str, cap: u64) -> io::Result<Arc<LiveLog>> {
        use fs_err::os::unix::fs::OpenOptionsExt;
        let mut live = self.live.lock().expect("logs lock");
        if let Some(open) = live.get(id) {
            return Ok(open.log.clone());
        }
        let file = fs_err::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .mode(0o600)
            .open(self.path(id))?
            .into_parts()
            .0;
        let len = file.metadata()?.len();
        let at_line_start = len == 0 || {
            use std::os::unix::fs::FileExt;
            let mut last = [0u8; 1];
            file.read_exact_at(&mut last, len - 1).is_ok() && last[0] == b'\n'
        };
        let (progress, readers) = watch::channel(Progress { len, done: false });
        let sink = FileSink { file, progress };
        let log = Arc::new(LiveLog::new(Box::new(sink), len, at_line_start, cap));
        live.insert(
            id.to_string(),
            Open {
                log: log.clone(),
                progress: readers,
            },
        );
        Ok(log)
    }

    /// [`LogStore::remove`], blocking.
    fn remove_now(&self, id: &str) -> io::Result<bool> {
        // Held across the unlink, so the log cannot come alive in between.
        let live = self.live.lock().expect("logs lock");
        if live.contains_key(id) {
            return Ok(false);
        }
        match fs_err::remove_file(self.path(id)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(e),
        }
    }
}

/// Length of a stored log file, 0 if there is none. Blocking.
fn file_len(path: &std::path::Path) -> io::Result<u64> {
    match std::fs::metadata(path) {
        Ok(meta) => Ok(meta.len()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

#[async_trait]
impl LogStore for FileLogs {
    async fn open_live(&self, id: &str, cap: u64) -> io::Result<Arc<LiveLog>> {
        let (logs, id) = (self.clone(), id.to_string());
        blocking(move || logs.open_now(&id, cap)).await
    }

    async fn close(&self, id: &str) {
        let open = self.live.lock().expect("logs lock").remove(id);
        if let Some(Open { log, .. }) = open {
            if let Err(e) = blocking(move || log.finish()).await {
                tracing::warn!(job = %id, error = %e, "cannot make the job's log durable");
            }
        }
    }

    async fn remove(&self, id: &str) -> io::Result<bool> {
        let (logs, id) = (self.clone(), id.to_string());
        blocking(move || logs.remove_now(&id)).await
    }

    fn stream(&self, id: &str, offset: u64) -> LogStream {
        let progress = self
            .live
            .lock()
            .expect("logs lock")
            .get(id)
            .map(|open| open.progress.clone());
        let chunks = FileChunks {
            path: self.path(id),
            file: None,
        };
        follow(chunks, offset, progress)
    }

    async fn len(&self, id: &str) -> io::Result<u64> {
        let path = self.path(id);
        blocking(move || file_len(&path)).await
    }

    /// One trip to the blocking pool for the whole listing.
    async fn lens(&self, ids: &[String]) -> Vec<io::Result<u64>> {
        let paths: Vec<PathBuf> = ids.iter().map(|id| self.path(id)).collect();
        let count = paths.len();
        match tokio::task::spawn_blocking(move || paths.iter().map(|p| file_len(p)).collect()).await
        {
            Ok(lens) => lens,
            Err(e) => (0..count)
                .map(|_| Err(io::Error::other(format!("log task failed: {e}"))))
                .collect(),
        }
    }
}

struct FileSink {
    file: std::fs::File,
    progress: watch::Sender<Progress>,
}

impl LogSink for FileSink {
    /// Data reaches the kernel before the length moves, so a reader that sees the new length
    /// can read the bytes.
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        self.progress.send_modify(|p| p.len += bytes.len() as u64);
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        let synced = self.file.sync_data();
        self.progress.send_modify(|p| p.done = true);
        synced
    }
}

/// A follower's view of a log file: opened at the first read, then read in order.
struct FileChunks {
    path: PathBuf,
    file: Option<tokio::fs::File>,
}

#[async_trait]
impl Chunks for FileChunks {
    async fn read(&mut self, pos: u64) -> io::Result<Bytes> {
        if self.file.is_none() {
            match tokio::fs::File::open(&self.path).await {
                Ok(mut f) => {
                    f.seek(io::SeekFrom::Start(pos)).await?;
                    self.file = Some(f);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Bytes::new()),
                Err(e) => return Err(e),
            }
        }
        let file = self.file.as_mut().expect("opened above");
        let mut buf = vec![0u8; CHUNK];
        let n = file.read(&mut buf).await?;
        buf.truncate(n);
        Ok(Bytes::from(buf))
    }
}

/// Logs in memory, for tests: the same behaviour as [`FileLogs`], nothing kept. Cheap to
/// clone.
#[derive(Clone, Default)]
pub struct MemoryLogs {
    inner: Arc<Mutex<Memory>>,
}

#[derive(Default)]
struct Memory {
    stored: HashMap<String, Arc<Mutex<Vec<u8>>>>,
    live: HashMap<String, Open>,
}

#[async_trait]
impl LogStore for MemoryLogs {
    async fn open_live(&self, id: &str, cap: u64) -> io::Result<Arc<LiveLog>> {
        let mut inner = self.inner.lock().expect("logs lock");
        if let Some(open) = inner.live.get(id) {
            return Ok(open.log.clone());
        }
        let bytes = inner.stored.entry(id.to_string()).or_default().clone();
        let (len, at_line_start) = {
            let stored = bytes.lock().expect("log lock");
            (
                stored.len() as u64,
                stored.last().is_none_or(|&b| b == b'\n'),
            )
        };
        let (progress, readers) = watch::channel(Progress { len, done: false });
        let sink = MemorySink { bytes, progress };
        let log = Arc::new(LiveLog::new(Box::new(sink), len, at_line_start, cap));
        inner.live.insert(
            id.to_string(),
            Open {
                log: log.clone(),
                progress: readers,
            },
        );
        Ok(log)
    }

    async fn close(&self, id: &str) {
        let open = self.inner.lock().expect("logs lock").live.remove(id);
        if let Some(Open { log, .. }) = open {
            let _ = log.finish();
        }
    }

    async fn remove(&self, id: &str) -> io::Result<bool> {
        let mut inner = self.inner.lock().expect("logs lock");
        if inner.live.contains_key(id) {
            return Ok(false);
        }
        inner.stored.remove(id);
        Ok(true)
    }

    fn stream(&self, id: &str, offset: u64) -> LogStream {
        let progress = self
            .inner
            .lock()
            .expect("logs lock")
            .live
            .get(id)
            .map(|open| open.progress.clone());
        let chunks = MemoryChunks {
            logs: self.clone(),
            id: id.to_string(),
            bytes: None,
        };
        follow(chunks, offset, progress)
    }

    async fn len(&self, id: &str) -> io::Result<u64> {
        let inner = self.inner.lock().expect("logs lock");
        Ok(inner
            .stored
            .get(id)
            .map_or(0, |b| b.lock().expect("log lock").len() as u64))
    }
}

struct MemorySink {
    bytes: Arc<Mutex<Vec<u8>>>,
    progress: watch::Sender<Progress>,
}

impl LogSink for MemorySink {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.bytes
            .lock()
            .expect("log lock")
            .extend_from_slice(bytes);
        self.progress.send_modify(|p| p.len += bytes.len() as u64);
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        self.progress.send_modify(|p| p.done = true);
        Ok(())
    }
}

/// A follower's view of a log in memory: found at the first read (as a file is opened), then
/// kept even if the log is removed meanwhile (as an open file is).
struct MemoryChunks {
    logs: MemoryLogs,
    id: String,
    bytes: Option<Arc<Mutex<Vec<u8>>>>,
}

#[async_trait]
impl Chunks for MemoryChunks {
    async fn read(&mut self, pos: u64) -> io::Result<Bytes> {
        if self.bytes.is_none() {
            let inner = self.logs.inner.lock().expect("logs lock");
            match inner.stored.get(&self.id) {
                Some(bytes) => self.bytes = Some(bytes.clone()),
                None => return Ok(Bytes::new()),
            }
        }
        let bytes = self.bytes.as_ref().expect("found above");
        let bytes = bytes.lock().expect("log lock");
        let start = usize::try_from(pos).unwrap_or(usize::MAX).min(bytes.len());
        let end = bytes.len().min(start + CHUNK);
        Ok(Bytes::copy_from_slice(&bytes[start..end]))
    }
}

/// One suite of behaviour every [`LogStore`] must show; each implementation runs it.
#[cfg(test)]
pub mod conformance {
    use super::*;
    use futures_util::StreamExt;
    use std::time::Duration;

    /// Runs every check against a fresh, empty store from `new`. Needs a multi-threaded
    /// runtime: the writer writes from a thread of its own while followers read.
    pub async fn run<L: LogStore>(new: impl Fn() -> L) {
        run_async(|| std::future::ready(new())).await;
    }

    /// [`run`] with stores that take a while to make (a fresh database each).
    pub async fn run_async<L: LogStore, F: std::future::Future<Output = L>>(new: impl Fn() -> F) {
        let new = || {
            let store = new();
            async move { Arc::new(store.await) as Arc<dyn LogStore> }
        };
        followers_resume_losslessly_at_any_offset_while_the_job_writes(new().await).await;
        the_cap_drops_job_output_but_not_server_notes(new().await).await;
        a_note_after_output_without_a_newline_starts_its_own_line(new().await).await;
        a_follower_sees_the_end_once_the_log_is_closed(new().await).await;
        only_closed_logs_are_removed_and_missing_ones_count_as_removed(new().await).await;
        offsets_past_the_end(new().await).await;
        an_open_log_has_one_writer(new().await).await;
        lengths(new().await).await;
    }

    /// The job ids the checks write logs of (a store that needs job records makes these).
    pub const JOB_IDS: [&str; 5] = ["j", "k", "q", "a", "b"];

    /// Everything a stream from `offset` yields, until it ends (within a minute).
    pub async fn collect(store: &dyn LogStore, id: &str, offset: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut s = store.stream(id, offset);
        let reading = async {
            while let Some(chunk) = s.next().await {
                out.extend_from_slice(&chunk.unwrap());
            }
        };
        tokio::time::timeout(Duration::from_secs(60), reading)
            .await
            .expect("the log stream did not end");
        out
    }

    /// What a client through a proxy that cuts every response after its first chunk gets:
    /// it reconnects each time at the offset it reached.
    async fn resume_after_every_chunk(store: Arc<dyn LogStore>, id: &str) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let mut s = store.stream(id, out.len() as u64);
            match s.next().await {
                Some(chunk) => out.extend_from_slice(&chunk.unwrap()),
                None => return out,
            }
        }
    }

    async fn followers_resume_losslessly_at_any_offset_while_the_job_writes(
        store: Arc<dyn LogStore>,
    ) {
        let log = store.open_live("j", u64::MAX).await.unwrap();
        log.append(b"one\n").unwrap();
        let mut expected = b"one\n".to_vec();
        let from_start = tokio::spawn({
            let store = store.clone();
            async move { collect(&*store, "j", 0).await }
        });
        let from_two = tokio::spawn({
            let store = store.clone();
            async move { collect(&*store, "j", 2).await }
        });
        let resuming = tokio::spawn(resume_after_every_chunk(store.clone(), "j"));
        let writer = std::thread::spawn(move || {
            for i in 0..500 {
                log.append(format!("line {i}").as_bytes()).unwrap();
                log.append(b"\n").unwrap();
                if i % 50 == 0 {
                    log.note(&format!("at {i}")).unwrap();
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        for i in 0..500 {
            expected.extend_from_slice(format!("line {i}\n").as_bytes());
            if i % 50 == 0 {
                expected.extend_from_slice(format!("==> at {i}\n").as_bytes());
            }
        }
        writer.join().unwrap();
        store.close("j").await;
        assert_eq!(from_start.await.unwrap(), expected);
        assert_eq!(from_two.await.unwrap(), expected[2..]);
        assert_eq!(resuming.await.unwrap(), expected);
        // A finished log reads back whole, and from any offset.
        let len = expected.len();
        for offset in [0, 1, 2, len / 3, len / 2, len - 1, len] {
            assert_eq!(
                collect(&*store, "j", offset as u64).await,
                expected[offset..],
                "from {offset}"
            );
        }
        assert_eq!(store.len("j").await.unwrap(), len as u64);
    }

    async fn the_cap_drops_job_output_but_not_server_notes(store: Arc<dyn LogStore>) {
        let log = store.open_live("j", 10).await.unwrap();
        assert_eq!(log.append(b"").unwrap(), Appended::All);
        assert_eq!(log.append(b"12345").unwrap(), Appended::All);
        assert_eq!(log.append(b"6789abcdef").unwrap(), Appended::CapReached);
        assert_eq!(log.append(b"more").unwrap(), Appended::CapReached);
        assert_eq!(log.len(), 10);
        log.note("log truncated").unwrap();
        log.note("again").unwrap();
        assert_eq!(log.append(b"more").unwrap(), Appended::CapReached);
        store.close("j").await;
        assert_eq!(
            collect(&*store, "j", 0).await,
            b"123456789a\n==> log truncated\n==> again\n"
        );
        // Reopened, it knows it ends with a newline; what it holds stays, over a smaller cap.
        let log = store.open_live("j", 5).await.unwrap();
        assert_eq!(log.len(), 39);
        assert_eq!(log.append(b"x").unwrap(), Appended::CapReached);
        log.note("reopened").unwrap();
        store.close("j").await;
        assert!(collect(&*store, "j", 0)
            .await
            .ends_with(b"again\n==> reopened\n"));
        // Exactly up to the cap is all of it.
        let log = store.open_live("k", 4).await.unwrap();
        assert_eq!(log.append(b"1234").unwrap(), Appended::All);
        assert_eq!(log.append(b"5").unwrap(), Appended::CapReached);
        store.close("k").await;
    }

    async fn a_note_after_output_without_a_newline_starts_its_own_line(store: Arc<dyn LogStore>) {
        let log = store.open_live("j", u64::MAX).await.unwrap();
        log.note("first").unwrap();
        log.append(b"no newline").unwrap();
        log.note("stopped").unwrap();
        log.append(b"x\n").unwrap();
        log.note("after a newline").unwrap();
        log.append(b"tail").unwrap();
        store.close("j").await;
        // Reopened after output without a newline: the same.
        store
            .open_live("j", u64::MAX)
            .await
            .unwrap()
            .note("again")
            .unwrap();
        store.close("j").await;
        assert_eq!(
            String::from_utf8(collect(&*store, "j", 0).await).unwrap(),
            "==> first\nno newline\n==> stopped\nx\n==> after a newline\ntail\n==> again\n"
        );
    }

    async fn a_follower_sees_the_end_once_the_log_is_closed(store: Arc<dyn LogStore>) {
        // A queued job's log: open and empty.
        store.open_live("q", u64::MAX).await.unwrap();
        let log = store.open_live("j", u64::MAX).await.unwrap();
        log.append(b"partial").unwrap();
        let spawn = |id: &'static str, offset| {
            let store = store.clone();
            tokio::spawn(async move { collect(&*store, id, offset).await })
        };
        let (whole, at_end, queued) = (spawn("j", 0), spawn("j", 7), spawn("q", 0));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!whole.is_finished() && !at_end.is_finished() && !queued.is_finished());
        store.close("j").await;
        store.close("q").await;
        assert_eq!(whole.await.unwrap(), b"partial");
        assert_eq!(at_end.await.unwrap(), b"");
        assert_eq!(queued.await.unwrap(), b"");
        // Closing again, or a log never opened, is nothing.
        store.close("j").await;
        store.close("never").await;
        assert_eq!(collect(&*store, "j", 0).await, b"partial");
    }

    async fn only_closed_logs_are_removed_and_missing_ones_count_as_removed(
        store: Arc<dyn LogStore>,
    ) {
        let log = store.open_live("j", u64::MAX).await.unwrap();
        log.append(b"secret\n").unwrap();
        assert!(!store.remove("j").await.unwrap());
        assert_eq!(store.len("j").await.unwrap(), 7);
        store.close("j").await;
        assert!(store.remove("j").await.unwrap());
        assert_eq!(store.len("j").await.unwrap(), 0);
        assert_eq!(collect(&*store, "j", 0).await, b"");
        // Already gone, or never there.
        assert!(store.remove("j").await.unwrap());
        assert!(store.remove("never").await.unwrap());
        // A removed log opened again starts empty.
        let log = store.open_live("j", u64::MAX).await.unwrap();
        assert_eq!(log.len(), 0);
        store.close("j").await;
    }

    async fn offsets_past_the_end(store: Arc<dyn LogStore>) {
        assert_eq!(collect(&*store, "missing", 0).await, b"");
        assert_eq!(collect(&*store, "missing", 5).await, b"");
        let log = store.open_live("j", u64::MAX).await.unwrap();
        log.append(b"abc").unwrap();
        // Open: past the end waits for the bytes from there on.
        let ahead = tokio::spawn({
            let store = store.clone();
            async move { collect(&*store, "j", 5).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        log.append(b"de").unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!ahead.is_finished());
        log.append(b"fgh").unwrap();
        store.close("j").await;
        assert_eq!(ahead.await.unwrap(), b"fgh");
        // Complete: past the end is nothing, at once.
        assert_eq!(collect(&*store, "j", 8).await, b"");
        assert_eq!(collect(&*store, "j", 100).await, b"");
    }

    async fn an_open_log_has_one_writer(store: Arc<dyn LogStore>) {
        let a = store.open_live("j", 10).await.unwrap();
        let b = store.open_live("j", 10).await.unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        a.append(b"12345").unwrap();
        assert_eq!(b.append(b"67890x").unwrap(), Appended::CapReached);
        store.close("j").await;
        let c = store.open_live("j", 20).await.unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(c.len(), 10);
        store.close("j").await;
    }

    async fn lengths(store: Arc<dyn LogStore>) {
        let log = store.open_live("a", u64::MAX).await.unwrap();
        log.append(b"12345").unwrap();
        store.close("a").await;
        let log = store.open_live("b", u64::MAX).await.unwrap();
        log.append(b"12").unwrap();
        let ids = ["b", "missing", "a"].map(String::from);
        let lens: Vec<u64> = store
            .lens(&ids)
            .await
            .into_iter()
            .map(|l| l.unwrap())
            .collect();
        assert_eq!(lens, [2, 0, 5]);
        assert_eq!(store.len("b").await.unwrap(), 2);
        store.close("b").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_logs_conform() {
        run(MemoryLogs::default).await;
    }
}

#[cfg(test)]
mod tests {
    use super::conformance::collect;
    use super::*;
    use std::path::Path;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn file_logs_conform() {
        let dir = tempfile::tempdir().unwrap();
        let opened = std::sync::atomic::AtomicUsize::new(0);
        conformance::run(|| {
            let n = opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            FileLogs::new(dir.path().join(format!("logs{n}"))).unwrap()
        })
        .await;
    }

    /// The file holds exactly what readers get, with the server's notes in it.
    #[tokio::test]
    async fn the_file_is_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileLogs::new(dir.path().to_path_buf()).unwrap();
        let log = store.open_live("j", 10).await.unwrap();
        log.append(b"12345").unwrap();
        log.append(b"6789abcdef").unwrap();
        log.note("log truncated").unwrap();
        store.close("j").await;
        let stored = std::fs::read(store.path("j")).unwrap();
        assert_eq!(stored, b"123456789a\n==> log truncated\n");
        assert_eq!(collect(&store, "j", 0).await, stored);
        // Reopening appends to what a previous server process wrote.
        std::fs::write(store.path("k"), "from before").unwrap();
        store
            .open_live("k", 100)
            .await
            .unwrap()
            .note("restarted")
            .unwrap();
        store.close("k").await;
        assert_eq!(
            std::fs::read_to_string(store.path("k")).unwrap(),
            "from before\n==> restarted\n"
        );
    }

    #[tokio::test]
    async fn logs_are_private_and_removal_unlinks_the_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = FileLogs::new(dir.path().join("logs")).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("logs")), 0o700);
        let log = store.open_live("j", u64::MAX).await.unwrap();
        log.append(b"secret\n").unwrap();
        assert_eq!(mode(&store.path("j")), 0o600);
        assert!(!store.remove("j").await.unwrap());
        assert!(store.path("j").exists());
        store.close("j").await;
        assert!(store.remove("j").await.unwrap());
        assert!(!store.path("j").exists());
    }
}
