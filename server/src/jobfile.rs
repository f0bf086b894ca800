//! Files a job wrote (its test report, its `/artifacts`), opened as hostile: never through a
//! symbolic link (the server may be root, a link could name any of its files) and never
//! blocking on a fifo. The one opener both [`crate::report`] and [`crate::artifacts`] use.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// What is at a path a job wrote.
#[derive(Debug)]
pub enum JobFile {
    Missing,
    /// A link, fifo, socket, device or directory: not read.
    NotRegular,
    /// A regular file, open for reading.
    Regular(File),
}

/// Opens `path` with `O_NOFOLLOW | O_NONBLOCK` and checks what was opened (`fstat`).
pub fn open(path: &Path) -> std::io::Result<JobFile> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(JobFile::Missing),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(JobFile::NotRegular),
        Err(e) => return Err(e),
    };
    Ok(if file.metadata()?.is_file() {
        JobFile::Regular(file)
    } else {
        JobFile::NotRegular
    })
}
