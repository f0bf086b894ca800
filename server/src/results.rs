//! What a job keeps after its end, beside its log: the test report (read, as JSON), pytest's
//! own JUnit file, and the artifacts its tests wrote, under `<data>/results/<id>/`.
//!
//! Written once, by the executor through [`crate::executor::JobEvents`] when the job's tests
//! end; read by the API; removed by retention with the job's log. Nothing here is read from
//! the job's directory after that: the job manager removes it when the job ends.
//!
//! Callers see [`ResultStore`]: [`Results`] keeps them as files on the node that ran the job
//! (its blocking calls run on the blocking pool); [`crate::pg::results::PgResults`] keeps them
//! in the cluster's database, where any node serves them. One suite (`conformance`, in the
//! tests) states what both do.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use ci_protocol::TestReport;
use futures_util::stream::BoxStream;

use crate::artifacts::{self, Packed};

/// Where what ended jobs keep lives: their test report, pytest's JUnit file, their
/// artifacts. Ids are the server's own (checked against the job store first), never paths.
#[async_trait]
pub trait ResultStore: Send + Sync + 'static {
    /// Keeps the report of job `id` and a copy of pytest's JUnit file it was read from, at
    /// most [`crate::report::MAX_REPORT_BYTES`] of it (opened without following a link: the
    /// job wrote it; a missing file keeps no JUnit file).
    async fn keep_report(&self, id: &str, report: &TestReport, junit: &Path)
        -> std::io::Result<()>;

    /// The report of job `id`, if one was kept.
    async fn report(&self, id: &str) -> std::io::Result<Option<TestReport>>;

    /// pytest's own JUnit file of job `id`, if one was kept.
    async fn junit(&self, id: &str) -> std::io::Result<Option<Kept>>;

    /// Packs what job `id`'s tests wrote to `dir` (at most `cap` bytes of files) and keeps
    /// it; `None` when they wrote nothing (then nothing is kept).
    async fn keep_artifacts(
        &self,
        id: &str,
        dir: &Path,
        cap: u64,
    ) -> std::io::Result<Option<Packed>>;

    /// The artifacts of job `id` as a tar.gz, if any were kept.
    async fn artifacts(&self, id: &str) -> std::io::Result<Option<Kept>>;

    /// Removes everything kept of job `id`; nothing kept is no error.
    async fn remove(&self, id: &str) -> std::io::Result<()>;
}

/// A kept file, as the API sends it: its length is known before the first byte.
pub enum Kept {
    /// An open file of `len` bytes, read from its start.
    File { file: std::fs::File, len: u64 },
    /// The whole content.
    Bytes(Bytes),
    /// `len` bytes, read as they are sent.
    Stream {
        len: u64,
        stream: BoxStream<'static, std::io::Result<Bytes>>,
    },
}

impl std::fmt::Debug for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kept::File { len, .. } => write!(f, "Kept::File({len} bytes)"),
            Kept::Bytes(b) => write!(f, "Kept::Bytes({} bytes)", b.len()),
            Kept::Stream { len, .. } => write!(f, "Kept::Stream({len} bytes)"),
        }
    }
}

impl Kept {
    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Kept::File { len, .. } | Kept::Stream { len, .. } => *len,
            Kept::Bytes(b) => b.len() as u64,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Its bytes as a stream, the way a response body takes them.
    pub fn into_stream(self) -> BoxStream<'static, std::io::Result<Bytes>> {
        use futures_util::StreamExt;
        match self {
            Kept::File { file, .. } => {
                tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file)).boxed()
            }
            Kept::Bytes(b) => futures_util::stream::once(async move { Ok(b) }).boxed(),
            Kept::Stream { stream, .. } => stream,
        }
    }

    /// All of it in memory (tests, small files).
    pub async fn into_bytes(self) -> std::io::Result<Vec<u8>> {
        use futures_util::StreamExt;
        let mut out = Vec::new();
        let mut stream = self.into_stream();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }
}

/// The file store as the trait object callers hold.
impl From<Results> for Arc<dyn ResultStore> {
    fn from(results: Results) -> Self {
        Arc::new(results)
    }
}

/// Runs file work on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| std::io::Error::other(format!("results task failed: {e}")))?
}

#[async_trait]
impl ResultStore for Results {
    async fn keep_report(
        &self,
        id: &str,
        report: &TestReport,
        junit: &Path,
    ) -> std::io::Result<()> {
        let (results, id, report, junit) = (
            self.clone(),
            id.to_string(),
            report.clone(),
            junit.to_path_buf(),
        );
        blocking(move || results.keep_report(&id, &report, &junit)).await
    }

    async fn report(&self, id: &str) -> std::io::Result<Option<TestReport>> {
        let (results, id) = (self.clone(), id.to_string());
        blocking(move || results.report(&id)).await
    }

    async fn junit(&self, id: &str) -> std::io::Result<Option<Kept>> {
        let (results, id) = (self.clone(), id.to_string());
        blocking(move || sized(results.junit(&id)?)).await
    }

    async fn keep_artifacts(
        &self,
        id: &str,
        dir: &Path,
        cap: u64,
    ) -> std::io::Result<Option<Packed>> {
        let (results, id, dir) = (self.clone(), id.to_string(), dir.to_path_buf());
        blocking(move || results.keep_artifacts(&id, &dir, cap)).await
    }

    async fn artifacts(&self, id: &str) -> std::io::Result<Option<Kept>> {
        let (results, id) = (self.clone(), id.to_string());
        blocking(move || sized(results.artifacts(&id)?)).await
    }

    async fn remove(&self, id: &str) -> std::io::Result<()> {
        let (results, id) = (self.clone(), id.to_string());
        blocking(move || results.remove(&id)).await
    }
}

/// A kept file with its length. Blocking.
fn sized(file: Option<std::fs::File>) -> std::io::Result<Option<Kept>> {
    let Some(file) = file else {
        return Ok(None);
    };
    let len = file.metadata()?.len();
    Ok(Some(Kept::File { file, len }))
}

/// Whether `dir` holds nothing (or is missing): a job's tests wrote no artifacts. Blocking.
pub(crate) fn is_empty_dir(dir: &Path) -> std::io::Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
    }
}

/// The results of every job as files: `<data>/results`. Cheap to clone. Its own methods
/// block; as a [`ResultStore`] they run on the blocking pool.
#[derive(Clone, Debug)]
pub struct Results {
    root: PathBuf,
}

const REPORT: &str = "report.json";
const JUNIT: &str = "junit.xml";
const ARTIFACTS: &str = "artifacts.tar.gz";

impl Results {
    pub fn new(root: PathBuf) -> Results {
        Results { root }
    }

    /// The directory of job `id`'s results. Ids are the server's own (checked against the
    /// store before any call here), never a path.
    fn dir(&self, id: &str) -> PathBuf {
        debug_assert!(!id.contains('/') && !id.starts_with('.'));
        self.root.join(id)
    }

    fn make_dir(&self, id: &str) -> std::io::Result<PathBuf> {
        let dir = self.dir(id);
        fs_err::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Keeps the report of job `id` and a copy of pytest's JUnit file it was read from
    /// (opened without following a link: the job wrote it).
    pub fn keep_report(&self, id: &str, report: &TestReport, junit: &Path) -> std::io::Result<()> {
        let dir = self.make_dir(id)?;
        if let Some(mut file) = crate::report::open(junit)? {
            let mut copy = fs_err::File::create(dir.join(JUNIT))?;
            std::io::copy(
                &mut std::io::Read::take(&mut file, crate::report::MAX_REPORT_BYTES),
                &mut copy,
            )?;
        }
        let json = serde_json::to_vec(report).map_err(std::io::Error::other)?;
        write_atomically(&dir.join(REPORT), &json)
    }

    /// The report of job `id`, if one was kept.
    pub fn report(&self, id: &str) -> std::io::Result<Option<TestReport>> {
        match std::fs::read(self.dir(id).join(REPORT)) {
            Ok(json) => serde_json::from_slice(&json)
                .map(Some)
                .map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// pytest's own JUnit file of job `id`, if one was kept.
    pub fn junit(&self, id: &str) -> std::io::Result<Option<std::fs::File>> {
        open_existing(&self.dir(id).join(JUNIT))
    }

    /// Packs what job `id`'s tests wrote to `dir` (at most `cap` bytes of files) and keeps it;
    /// `None` when they wrote nothing.
    pub fn keep_artifacts(
        &self,
        id: &str,
        dir: &Path,
        cap: u64,
    ) -> std::io::Result<Option<Packed>> {
        if is_empty_dir(dir)? {
            return Ok(None);
        }
        let dir_out = self.make_dir(id)?;
        let (path, part) = (dir_out.join(ARTIFACTS), dir_out.join(".artifacts.part"));
        let out = std::io::BufWriter::new(fs_err::File::create(&part)?);
        let packed = artifacts::pack(dir, out, cap)?;
        fs_err::rename(&part, &path)?;
        Ok(Some(packed))
    }

    /// The artifacts of job `id` as a tar.gz, if any were kept.
    pub fn artifacts(&self, id: &str) -> std::io::Result<Option<std::fs::File>> {
        open_existing(&self.dir(id).join(ARTIFACTS))
    }

    /// Removes everything kept of job `id`; nothing kept is no error.
    pub fn remove(&self, id: &str) -> std::io::Result<()> {
        match std::fs::remove_dir_all(self.dir(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

fn open_existing(path: &Path) -> std::io::Result<Option<std::fs::File>> {
    match std::fs::File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename: a reader sees the whole
/// file or none.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let part = path.with_extension("part");
    let mut file = fs_err::File::create(&part)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs_err::rename(&part, path)
}

/// One suite of behaviour every [`ResultStore`] must show; each implementation runs it.
#[cfg(test)]
pub mod conformance {
    use super::*;
    use ci_protocol::TestCounts;

    fn report(passed: u64) -> TestReport {
        TestReport {
            counts: TestCounts {
                passed,
                ..TestCounts::default()
            },
            ..TestReport::default()
        }
    }

    async fn bytes(kept: std::io::Result<Option<Kept>>) -> Option<Vec<u8>> {
        let kept = kept.unwrap()?;
        let len = kept.len();
        let bytes = kept.into_bytes().await.unwrap();
        assert_eq!(bytes.len() as u64, len, "the length said up front");
        Some(bytes)
    }

    /// The files of a tar.gz, by path.
    fn unpacked(archive: &[u8]) -> std::collections::BTreeMap<String, Vec<u8>> {
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
        let mut files = std::collections::BTreeMap::new();
        for entry in tar.entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.header().entry_type().is_file() {
                let path = entry.path().unwrap().display().to_string();
                let mut content = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut content).unwrap();
                files.insert(path, content);
            }
        }
        files
    }

    /// Runs every check against `store`, empty.
    pub async fn run(store: Arc<dyn ResultStore>) {
        let job = tempfile::tempdir().unwrap();
        let store = &*store;
        assert_eq!(store.report("a").await.unwrap(), None);
        assert!(bytes(store.junit("a").await).await.is_none());
        assert!(bytes(store.artifacts("a").await).await.is_none());

        // A report and a copy of its JUnit file, larger than a database chunk.
        let junit = job.path().join("junit.xml");
        let big: Vec<u8> = (0..(2 << 20) + 12_345).map(|i| (i % 251) as u8).collect();
        std::fs::write(&junit, &big).unwrap();
        store.keep_report("a", &report(2), &junit).await.unwrap();
        assert_eq!(store.report("a").await.unwrap(), Some(report(2)));
        assert_eq!(bytes(store.junit("a").await).await.unwrap(), big);
        // Kept again: replaced.
        std::fs::write(&junit, "<testsuite/>").unwrap();
        store.keep_report("a", &report(3), &junit).await.unwrap();
        assert_eq!(store.report("a").await.unwrap(), Some(report(3)));
        assert_eq!(
            bytes(store.junit("a").await).await.unwrap(),
            b"<testsuite/>"
        );
        // An empty JUnit file is kept, empty; a missing one is not kept.
        std::fs::write(&junit, "").unwrap();
        store.keep_report("e", &report(0), &junit).await.unwrap();
        assert_eq!(bytes(store.junit("e").await).await.unwrap(), b"");
        store
            .keep_report("m", &report(1), &job.path().join("missing.xml"))
            .await
            .unwrap();
        assert_eq!(store.report("m").await.unwrap(), Some(report(1)));
        assert!(bytes(store.junit("m").await).await.is_none());
        // A link in place of the JUnit file is not followed.
        let secret = job.path().join("secret");
        std::fs::write(&secret, "root:x:0:0").unwrap();
        let link = job.path().join("link.xml");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        assert!(store.keep_report("l", &report(1), &link).await.is_err());
        assert!(bytes(store.junit("l").await).await.is_none());

        // Artifacts: none written, none kept.
        let artifacts = job.path().join("artifacts");
        assert_eq!(
            store.keep_artifacts("a", &artifacts, 100).await.unwrap(),
            None
        );
        std::fs::create_dir(&artifacts).unwrap();
        assert_eq!(
            store.keep_artifacts("a", &artifacts, 100).await.unwrap(),
            None
        );
        assert!(bytes(store.artifacts("a").await).await.is_none());
        // Some, one of them large and incompressible; what passes the cap is left out.
        use rand::RngCore;
        let mut noise = vec![0u8; (3 << 20) + 7];
        rand::rng().fill_bytes(&mut noise);
        std::fs::create_dir(artifacts.join("sub")).unwrap();
        std::fs::write(artifacts.join("coverage.xml"), "<c/>").unwrap();
        std::fs::write(artifacts.join("sub/noise.bin"), &noise).unwrap();
        std::fs::write(artifacts.join("zz-too-big"), vec![b'z'; 1 << 20]).unwrap();
        let packed = store
            .keep_artifacts("a", &artifacts, 4 << 20)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((packed.files, packed.left_out), (2, 1));
        let archive = bytes(store.artifacts("a").await).await.unwrap();
        let files = unpacked(&archive);
        assert_eq!(files.len(), 2);
        assert_eq!(files["coverage.xml"], b"<c/>");
        assert!(files["sub/noise.bin"] == noise);
        // Kept again: replaced.
        std::fs::remove_file(artifacts.join("sub/noise.bin")).unwrap();
        store
            .keep_artifacts("a", &artifacts, 100)
            .await
            .unwrap()
            .unwrap();
        let files = unpacked(&bytes(store.artifacts("a").await).await.unwrap());
        assert_eq!(files.keys().collect::<Vec<_>>(), ["coverage.xml"]);

        // Removed: all of a job's, nothing of another's; twice is no error.
        store.remove("a").await.unwrap();
        store.remove("a").await.unwrap();
        store.remove("never").await.unwrap();
        assert_eq!(store.report("a").await.unwrap(), None);
        assert!(bytes(store.junit("a").await).await.is_none());
        assert!(bytes(store.artifacts("a").await).await.is_none());
        assert_eq!(store.report("m").await.unwrap(), Some(report(1)));
    }

    #[tokio::test]
    async fn file_results_conform() {
        let data = tempfile::tempdir().unwrap();
        run(Arc::new(Results::new(data.path().join("results")))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ci_protocol::TestCounts;

    fn report() -> TestReport {
        TestReport {
            counts: TestCounts {
                passed: 2,
                ..TestCounts::default()
            },
            ..TestReport::default()
        }
    }

    #[test]
    fn keeps_reads_and_removes_a_jobs_results() {
        let data = tempfile::tempdir().unwrap();
        let results = Results::new(data.path().join("results"));
        let job = tempfile::tempdir().unwrap();
        let junit = job.path().join("junit.xml");
        std::fs::write(&junit, "<testsuite/>").unwrap();
        assert_eq!(results.report("a").unwrap(), None);
        assert!(results.junit("a").unwrap().is_none());
        results.keep_report("a", &report(), &junit).unwrap();
        assert_eq!(results.report("a").unwrap(), Some(report()));
        let mut kept = String::new();
        std::io::Read::read_to_string(&mut results.junit("a").unwrap().unwrap(), &mut kept)
            .unwrap();
        assert_eq!(kept, "<testsuite/>");

        let artifacts = job.path().join("artifacts");
        std::fs::create_dir(&artifacts).unwrap();
        assert_eq!(results.keep_artifacts("a", &artifacts, 100).unwrap(), None);
        assert!(results.artifacts("a").unwrap().is_none());
        std::fs::write(artifacts.join("coverage.xml"), "<c/>").unwrap();
        let packed = results
            .keep_artifacts("a", &artifacts, 100)
            .unwrap()
            .unwrap();
        assert_eq!(packed.files, 1);
        assert!(results.artifacts("a").unwrap().is_some());

        results.remove("a").unwrap();
        results.remove("a").unwrap();
        assert_eq!(results.report("a").unwrap(), None);
        assert!(results.artifacts("a").unwrap().is_none());
    }

    #[test]
    fn a_link_in_place_of_the_junit_file_is_not_followed() {
        let data = tempfile::tempdir().unwrap();
        let results = Results::new(data.path().join("results"));
        let job = tempfile::tempdir().unwrap();
        let secret = job.path().join("secret");
        std::fs::write(&secret, "root:x:0:0").unwrap();
        let junit = job.path().join("junit.xml");
        std::os::unix::fs::symlink(&secret, &junit).unwrap();
        assert!(results.keep_report("a", &report(), &junit).is_err());
        let kept = results.junit("a").unwrap();
        assert!(kept.is_none(), "a link's target was copied");
    }
}
