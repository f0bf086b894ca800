//! Job logs: one append-only file per job, plus a live channel so any number of readers can
//! follow a running job from any byte offset and see exactly the stored bytes.
//!
//! A reader never gets bytes from memory, only from the file: what a client prints is by
//! construction a slice of the stored log, so a reconnect at offset N resumes with nothing lost
//! and nothing repeated.
//!
//! Logs are the server's user's only (directory 0700, files 0600): a job's output may hold
//! what its owner would not show other local users. `retention` removes finished ones.

use fs_err::os::unix::fs::OpenOptionsExt;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::Stream;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;

/// What readers of a live log need to know: how many bytes are in the file, and whether more
/// can come.
#[derive(Clone, Copy, Debug, Default)]
struct Progress {
    len: u64,
    done: bool,
}

/// The writing side of one job's log.
pub struct LiveLog {
    file: Mutex<Writer>,
    progress: watch::Sender<Progress>,
    /// Bytes past which output is no longer stored.
    cap: u64,
}

struct Writer {
    file: std::fs::File,
    /// Whether the log ends with a newline (or is empty): server lines start on a line of
    /// their own even when the job's output did not end one.
    at_line_start: bool,
}

/// What happened to bytes handed to [`LiveLog::append`].
#[derive(Debug, PartialEq, Eq)]
pub enum Appended {
    All,
    /// The log reached its cap: the bytes past it were dropped.
    CapReached,
}

impl LiveLog {
    /// Appends bytes to the file, then tells readers. Data reaches the kernel before `len`
    /// moves, so a reader that sees the new length can read the bytes.
    pub fn append(&self, data: &[u8]) -> std::io::Result<Appended> {
        let mut w = self.file.lock().expect("log lock");
        let len = self.progress.borrow().len;
        let room = self.cap.saturating_sub(len);
        let take = (data.len() as u64).min(room) as usize;
        if take > 0 {
            w.file.write_all(&data[..take])?;
            w.at_line_start = data[take - 1] == b'\n';
            self.progress.send_modify(|p| p.len += take as u64);
        }
        Ok(if take < data.len() {
            Appended::CapReached
        } else {
            Appended::All
        })
    }

    /// Appends a line written by the server itself (not the job), past any cap.
    pub fn note(&self, line: &str) -> std::io::Result<()> {
        let mut w = self.file.lock().expect("log lock");
        let text = format!("{}==> {line}\n", if w.at_line_start { "" } else { "\n" });
        w.file.write_all(text.as_bytes())?;
        w.at_line_start = true;
        self.progress.send_modify(|p| p.len += text.len() as u64);
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.progress.borrow().len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// No more bytes will come: readers finish once they reach the end.
    pub fn finish(&self) {
        if let Ok(w) = self.file.lock() {
            let _ = w.file.sync_data();
        }
        self.progress.send_modify(|p| p.done = true);
    }
}

/// All logs on disk, and the live ones in memory.
#[derive(Clone)]
pub struct LogStore {
    dir: PathBuf,
    live: Arc<Mutex<HashMap<String, Arc<LiveLog>>>>,
}

impl LogStore {
    /// Opens the log directory, creating it private or tightening an older one (see
    /// [`crate::perms`]). Blocking.
    pub fn new(dir: PathBuf) -> std::io::Result<LogStore> {
        crate::perms::private_dir(&dir)?;
        Ok(LogStore {
            dir,
            live: Arc::default(),
        })
    }

    pub fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.log"))
    }

    /// Opens (creating or appending to) the log of a job that is about to produce output.
    pub fn open_live(&self, id: &str, cap: u64) -> std::io::Result<Arc<LiveLog>> {
        let mut live = self.live.lock().expect("logs lock");
        if let Some(log) = live.get(id) {
            return Ok(log.clone());
        }
        let path = self.path(id);
        let file = fs_err::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .mode(0o600)
            .open(&path)?
            .into_parts()
            .0;
        let len = file.metadata()?.len();
        let at_line_start = len == 0 || {
            use std::os::unix::fs::FileExt;
            let mut last = [0u8; 1];
            file.read_exact_at(&mut last, len - 1).is_ok() && last[0] == b'\n'
        };
        let (progress, _) = watch::channel(Progress { len, done: false });
        let log = Arc::new(LiveLog {
            file: Mutex::new(Writer {
                file,
                at_line_start,
            }),
            progress,
            cap: cap.max(len),
        });
        live.insert(id.to_string(), log.clone());
        Ok(log)
    }

    /// Marks a job's log complete and forgets its live state.
    pub fn close(&self, id: &str) {
        if let Some(log) = self.live.lock().expect("logs lock").remove(id) {
            log.finish();
        }
    }

    /// Removes the stored log of a job that has ended (`retention`). A log that is still
    /// live is left alone and `Ok(false)` returned; a log that is already gone counts as
    /// removed. Blocking.
    pub fn remove(&self, id: &str) -> std::io::Result<bool> {
        // Held across the unlink, so the log cannot come alive in between.
        let live = self.live.lock().expect("logs lock");
        if live.contains_key(id) {
            return Ok(false);
        }
        match fs_err::remove_file(self.path(id)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Appends a server line to a job's log whether or not it is live (used for jobs found
    /// running after a crash).
    pub fn note_offline(&self, id: &str, line: &str) -> std::io::Result<()> {
        let log = self.open_live(id, u64::MAX)?;
        let result = log.note(line);
        self.close(id);
        result
    }

    /// The bytes of a job's log from `offset` on: first what is stored, then, while the job
    /// runs, what it writes next; ends when the job's log is complete.
    pub fn stream(
        &self,
        id: &str,
        offset: u64,
    ) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
        let progress = self
            .live
            .lock()
            .expect("logs lock")
            .get(id)
            .map(|l| l.progress.subscribe());
        let path = self.path(id);
        let state = Reader {
            path,
            file: None,
            pos: offset,
            progress,
        };
        futures_util::stream::unfold(Some(state), |state| async move {
            let mut state = state?;
            match state.next().await {
                Ok(Some(bytes)) => Some((Ok(bytes), Some(state))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
    }
}

struct Reader {
    path: PathBuf,
    file: Option<tokio::fs::File>,
    pos: u64,
    /// `None` once the log is known to be complete.
    progress: Option<watch::Receiver<Progress>>,
}

impl Reader {
    async fn next(&mut self) -> std::io::Result<Option<Bytes>> {
        loop {
            // Look at the progress *before* reading, so a write that lands after the read is
            // still seen as a change below.
            let seen = self.progress.as_mut().map(|rx| *rx.borrow_and_update());
            let chunk = self.read_chunk().await?;
            if !chunk.is_empty() {
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
                // The writer is gone: the file is complete; drain it and stop.
                self.progress = None;
            }
        }
    }

    async fn read_chunk(&mut self) -> std::io::Result<Bytes> {
        if self.file.is_none() {
            match tokio::fs::File::open(&self.path).await {
                Ok(mut f) => {
                    f.seek(std::io::SeekFrom::Start(self.pos)).await?;
                    self.file = Some(f);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Bytes::new()),
                Err(e) => return Err(e),
            }
        }
        let file = self.file.as_mut().expect("opened above");
        let mut buf = vec![0u8; 64 * 1024];
        let n = file.read(&mut buf).await?;
        buf.truncate(n);
        self.pos += n as u64;
        Ok(Bytes::from(buf))
    }
}

/// Length of a stored log, 0 if there is none.
pub fn stored_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    async fn collect(store: &LogStore, id: &str, offset: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut s = std::pin::pin!(store.stream(id, offset));
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn follower_sees_every_byte_once_from_any_offset() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::new(dir.path().to_path_buf()).unwrap();
        let log = store.open_live("j", u64::MAX).unwrap();
        log.append(b"one\n").unwrap();
        let from_start = tokio::spawn({
            let store = store.clone();
            async move { collect(&store, "j", 0).await }
        });
        let from_two = tokio::spawn({
            let store = store.clone();
            async move { collect(&store, "j", 2).await }
        });
        for i in 0..200 {
            log.append(format!("line {i}\n").as_bytes()).unwrap();
            if i % 50 == 0 {
                tokio::task::yield_now().await;
            }
        }
        store.close("j");
        let all = from_start.await.unwrap();
        let stored = std::fs::read(store.path("j")).unwrap();
        assert_eq!(all, stored);
        assert_eq!(from_two.await.unwrap(), stored[2..]);
        // A finished log reads back whole.
        assert_eq!(collect(&store, "j", 0).await, stored);
    }

    #[tokio::test]
    async fn cap_drops_job_output_but_keeps_server_notes() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::new(dir.path().to_path_buf()).unwrap();
        let log = store.open_live("j", 10).unwrap();
        assert_eq!(log.append(b"12345").unwrap(), Appended::All);
        assert_eq!(log.append(b"6789abcdef").unwrap(), Appended::CapReached);
        log.note("log truncated").unwrap();
        log.note("again").unwrap();
        store.close("j");
        assert_eq!(
            std::fs::read_to_string(store.path("j")).unwrap(),
            "123456789a\n==> log truncated\n==> again\n"
        );
        // Reopened, it knows it ends with a newline.
        store.open_live("j", 100).unwrap().note("reopened").unwrap();
        assert!(std::fs::read_to_string(store.path("j"))
            .unwrap()
            .ends_with("again\n==> reopened\n"));
    }

    #[test]
    fn logs_are_private_and_only_ended_ones_are_removed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::new(dir.path().join("logs")).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("logs")), 0o700);
        let log = store.open_live("j", u64::MAX).unwrap();
        log.append(b"secret\n").unwrap();
        assert_eq!(mode(&store.path("j")), 0o600);
        // Live: kept.
        assert!(!store.remove("j").unwrap());
        assert!(store.path("j").exists());
        store.close("j");
        assert!(store.remove("j").unwrap());
        assert!(!store.path("j").exists());
        // Already gone.
        assert!(store.remove("j").unwrap());
    }
}
