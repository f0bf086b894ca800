//! The HTTP client of a `Client` and of its jobs, and the runtime every call runs on; both
//! made again in a child process after `fork` (`multiprocessing` on Linux), whose copies of the
//! parent's runtime threads and pooled connections do not exist.

use std::sync::{Arc, Mutex};

use ci_cli::client::Client as Http;
use ci_cli::config::Settings;

/// The settings a `Client` was made with, and its HTTP client in this process.
pub struct Conn {
    settings: Settings,
    /// The process that made `http`, and `http`.
    current: Mutex<(u32, Arc<Http>)>,
}

impl Conn {
    pub fn new(settings: Settings) -> anyhow::Result<Conn> {
        let http = Http::new(&settings)?;
        Ok(Conn {
            settings,
            current: Mutex::new((std::process::id(), Arc::new(http))),
        })
    }

    /// The server's URL, without a trailing `/`.
    pub fn base(&self) -> &str {
        &self.settings.server
    }

    /// The HTTP client of this process: the one made with the `Client`, or a new one in a
    /// child forked since.
    pub fn http(&self) -> anyhow::Result<Arc<Http>> {
        let pid = std::process::id();
        let mut current = self.current.lock().unwrap();
        if current.0 != pid {
            *current = (pid, Arc::new(Http::new(&self.settings)?));
        }
        Ok(current.1.clone())
    }
}

/// The runtime of this process: two worker threads (the follows of `LogStream`s run on them
/// while Python does something else), made at the first call, and again in a forked child.
/// A parent's runtime is left alone in the child, never dropped: its threads are not there to
/// be joined.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: Mutex<Option<(u32, &'static tokio::runtime::Runtime)>> = Mutex::new(None);
    let pid = std::process::id();
    let mut slot = RUNTIME.lock().unwrap();
    match *slot {
        Some((made_by, runtime)) if made_by == pid => runtime,
        _ => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("ci-client")
                .enable_all()
                .build()
                .expect("the ci_client runtime");
            let runtime: &'static _ = Box::leak(Box::new(runtime));
            *slot = Some((pid, runtime));
            runtime
        }
    }
}
