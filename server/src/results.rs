//! What a job keeps after its end, beside its log: the test report (read, as JSON), pytest's
//! own JUnit file, and the artifacts its tests wrote, under `<data>/results/<id>/`.
//!
//! Written once, by the executor through [`crate::executor::JobEvents`] when the job's tests
//! end; read by the API; removed by retention with the job's log. Nothing here is read from
//! the job's directory after that: the job manager removes it when the job ends. Blocking
//! (every call runs on the blocking pool).

use std::io::Write;
use std::path::{Path, PathBuf};

use ci_protocol::TestReport;

use crate::artifacts::{self, Packed};

/// The results of every job: `<data>/results`. Cheap to clone.
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
        let empty = match std::fs::read_dir(dir) {
            Ok(mut entries) => entries.next().is_none(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(e),
        };
        if empty {
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
