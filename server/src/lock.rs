//! One server per data directory: `<data>/server.lock`, held with `flock` for the life of
//! the process and holding its pid, so that a second server says who has the directory
//! instead of failing inside the database (sled's own lock answers a bare `WouldBlock`).

use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The lock file of the data directory `root`.
pub fn path(root: &Path) -> PathBuf {
    root.join("server.lock")
}

/// Why the data directory cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another ci-server is using {dir} ({holder})")]
    Taken { dir: String, holder: String },
    #[error("cannot lock {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// The data directory's lock, held until this is dropped (the kernel drops it with the
/// process, however it ends).
#[derive(Debug)]
pub struct DataLock {
    _file: std::fs::File,
}

/// Takes the lock of the data directory `root` (which exists) without waiting, and writes
/// this process's pid into it. Blocking.
pub fn acquire(root: &Path) -> Result<DataLock, LockError> {
    let path = path(root);
    let io = |source| LockError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    // flock(2): the lock belongs to the open file description, gone when the process is.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::WouldBlock {
            return Err(io(e));
        }
        let mut text = String::new();
        let _ = file.read_to_string(&mut text);
        let holder = match text.trim().parse::<u32>() {
            Ok(pid) => format!("pid {pid}"),
            Err(_) => "pid unknown".to_string(),
        };
        return Err(LockError::Taken {
            dir: root.display().to_string(),
            holder,
        });
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(DataLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_told_the_first_ones_pid() {
        let dir = tempfile::tempdir().unwrap();
        let held = acquire(dir.path()).unwrap();
        let text = std::fs::read_to_string(path(dir.path())).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        // Another open file description conflicts even in the same process.
        let e = acquire(dir.path()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "another ci-server is using {} (pid {})",
                dir.path().display(),
                std::process::id()
            )
        );
        drop(held);
        acquire(dir.path()).unwrap();
    }
}
