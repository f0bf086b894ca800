//! `LogStream`: a job's log as a Python iterator of `str`, fed by `ci`'s own follow (the same
//! lossless resume by byte offset as `ci wait`), which runs as a task while Python iterates.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ci_cli::client::Client as Http;
use ci_protocol::JobView;
use pyo3::prelude::*;
use tokio::sync::mpsc;

use crate::errors::Raise;
use crate::{runtime, wait_for, warn};

/// What the follow task tells the iterator.
enum Event {
    Bytes(Vec<u8>),
    /// A line `ci` would print on stderr (a lost connection).
    Notice(String),
    /// The follow ended: the job's final record, or why it could not go on.
    End(anyhow::Result<Box<JobView>>),
}

/// The follow's output, sent to the iterator as it is written.
struct Sender(mpsc::UnboundedSender<Event>);

impl Write for Sender {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .send(Event::Bytes(buf.to_vec()))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "stream dropped"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A job's log, chunk by chunk (``str``), as the server writes it; the iteration ends when the
/// job ends. ``offset`` is the log's byte offset after the last chunk given.
///
/// A chunk never ends inside a UTF-8 character: the bytes of one cut by the network wait for
/// the rest. Dropping the stream stops the follow (the job goes on).
#[pyclass(frozen, module = "ci_client")]
pub struct LogStream {
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<Event>>,
    /// Bytes received but not given yet: the start of a UTF-8 character cut by the network.
    pending: Mutex<Vec<u8>>,
    offset: AtomicU64,
    state: Mutex<State>,
    task: tokio::task::AbortHandle,
    /// The job's record, which the end of the follow brings up to date.
    view: Arc<Mutex<JobView>>,
}

enum State {
    Following,
    /// The follow ended; what is left is to give the pending bytes, then stop.
    Ended,
}

impl LogStream {
    pub fn start(http: Arc<Http>, id: String, offset: u64, view: Arc<Mutex<JobView>>) -> LogStream {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = runtime().spawn(async move {
            let notices = tx.clone();
            let notice = move |line: &str| {
                let _ = notices.send(Event::Notice(line.to_string()));
            };
            let mut out = Sender(tx.clone());
            let end = ci_cli::follow::follow_quietly(&http, &id, offset, &mut out, &notice).await;
            let _ = tx.send(Event::End(end.map(Box::new)));
        });
        LogStream {
            events: tokio::sync::Mutex::new(rx),
            pending: Mutex::new(Vec::new()),
            offset: AtomicU64::new(offset),
            state: Mutex::new(State::Following),
            task: task.abort_handle(),
            view,
        }
    }

    /// The text of the pending bytes that form whole characters (all of them at the end);
    /// advances the offset past them.
    fn take_text(&self, at_end: bool) -> String {
        let mut pending = self.pending.lock().unwrap();
        let keep = if at_end { 0 } else { incomplete_tail(&pending) };
        let whole_len = pending.len() - keep;
        let whole: Vec<u8> = pending.drain(..whole_len).collect();
        self.offset.fetch_add(whole.len() as u64, Ordering::SeqCst);
        String::from_utf8_lossy(&whole).into_owned()
    }
}

#[pymethods]
impl LogStream {
    /// The log's byte offset after the last chunk given: where a new follow would resume.
    #[getter]
    fn offset(&self) -> u64 {
        self.offset.load(Ordering::SeqCst)
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        loop {
            if matches!(*self.state.lock().unwrap(), State::Ended) {
                let rest = self.take_text(true);
                return Ok((!rest.is_empty()).then_some(rest));
            }
            let event = wait_for(py, async { self.events.lock().await.recv().await })?;
            match event {
                Some(Event::Bytes(bytes)) => {
                    self.pending.lock().unwrap().extend_from_slice(&bytes);
                    let text = self.take_text(false);
                    if !text.is_empty() {
                        return Ok(Some(text));
                    }
                }
                Some(Event::Notice(line)) => warn(&line),
                Some(Event::End(Ok(view))) => {
                    *self.view.lock().unwrap() = *view;
                    *self.state.lock().unwrap() = State::Ended;
                }
                Some(Event::End(Err(e))) => {
                    *self.state.lock().unwrap() = State::Ended;
                    return Err(e.raise());
                }
                // The task is gone without a word: it panicked.
                None => {
                    *self.state.lock().unwrap() = State::Ended;
                    return Err(crate::errors::CIError::new_err(
                        "the log's follow stopped unexpectedly",
                    ));
                }
            }
        }
    }
}

impl Drop for LogStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How many bytes at the end of `bytes` are the start of a UTF-8 character whose other bytes
/// have not come yet (0 to 3).
fn incomplete_tail(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(3) {
        let byte = bytes[bytes.len() - back];
        if byte & 0xC0 == 0x80 {
            continue; // a continuation byte: its lead is further back
        }
        let len = match byte {
            0xF0.. => 4,
            0xE0.. => 3,
            0xC0.. => 2,
            _ => 1,
        };
        return if len > back { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::incomplete_tail;

    #[test]
    fn a_character_cut_by_the_network_waits_for_its_rest() {
        let euro = "€".as_bytes(); // 3 bytes
        assert_eq!(incomplete_tail(b"abc"), 0);
        assert_eq!(incomplete_tail(euro), 0);
        assert_eq!(incomplete_tail(&euro[..1]), 1);
        assert_eq!(incomplete_tail(&euro[..2]), 2);
        assert_eq!(incomplete_tail(&[b'a', euro[0], euro[1]]), 2);
        let emoji = "🦀".as_bytes(); // 4 bytes
        assert_eq!(incomplete_tail(&emoji[..3]), 3);
        // Bytes that are not UTF-8 at all are given as they are (replaced), never held.
        assert_eq!(incomplete_tail(&[0x80, 0x80, 0x80]), 0);
        assert_eq!(incomplete_tail(b""), 0);
    }
}
