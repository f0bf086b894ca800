//! What ended jobs keep, in the database ([`PgResults`]): the test report, pytest's JUnit
//! file and the artifacts, as `results(job, name, idx, bytes)` rows of at most
//! [`CHUNK`] bytes each, written in one transaction per job and file, so that any node of the
//! cluster serves what the worker that ran the job kept.

use crate::pg::io_error;
use std::io::{self, Read};
use std::path::Path;

use async_trait::async_trait;
use bytes::Bytes;
use ci_protocol::TestReport;

use super::{Pg, PgError};
use crate::artifacts::{self, Packed};
use crate::results::{Kept, ResultStore};

/// The most bytes in one row.
pub const CHUNK: usize = 1 << 20;

const REPORT: &str = "report.json";
const JUNIT: &str = "junit.xml";
const ARTIFACTS: &str = "artifacts.tar.gz";

/// Results in the database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PgResults {
    pg: Pg,
}

fn from_pg(e: tokio_postgres::Error) -> io::Error {
    io_error(PgError::from(e))
}

/// Runs file work on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("results task failed: {e}")))?
}

/// Replaces the file `name` of job `id` in `tx` with `chunks` (at least one row, so that an
/// empty file is kept as one).
async fn put(
    tx: &tokio_postgres::Transaction<'_>,
    id: &str,
    name: &str,
    chunks: &[&[u8]],
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "DELETE FROM results WHERE job = $1 AND name = $2",
        &[&id, &name],
    )
    .await?;
    let insert = tx
        .prepare("INSERT INTO results (job, name, idx, bytes) VALUES ($1, $2, $3, $4)")
        .await?;
    let empty: [&[u8]; 1] = [&[]];
    let chunks = if chunks.is_empty() {
        &empty[..]
    } else {
        chunks
    };
    for (idx, bytes) in chunks.iter().enumerate() {
        tx.execute(&insert, &[&id, &name, &(idx as i32), bytes])
            .await?;
    }
    Ok(())
}

impl PgResults {
    pub fn new(pg: Pg) -> PgResults {
        PgResults { pg }
    }

    /// The whole file `name` of job `id`, if kept.
    async fn read_all(&self, id: &str, name: &str) -> io::Result<Option<Bytes>> {
        let client = self.pg.client().await.map_err(io_error)?;
        let rows = client
            .query(
                "SELECT bytes FROM results WHERE job = $1 AND name = $2 ORDER BY idx",
                &[&id, &name],
            )
            .await
            .map_err(from_pg)?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut out = Vec::new();
        for row in rows {
            out.extend_from_slice(row.get::<_, &[u8]>(0));
        }
        Ok(Some(Bytes::from(out)))
    }
}

#[async_trait]
impl ResultStore for PgResults {
    async fn keep_report(&self, id: &str, report: &TestReport, junit: &Path) -> io::Result<()> {
        let junit = junit.to_path_buf();
        let copy = blocking(move || {
            let Some(file) = crate::report::open(&junit)? else {
                return Ok(None);
            };
            let mut bytes = Vec::new();
            file.take(crate::report::MAX_REPORT_BYTES)
                .read_to_end(&mut bytes)?;
            Ok(Some(bytes))
        })
        .await?;
        let json = serde_json::to_vec(report).map_err(io::Error::other)?;
        let mut client = self.pg.client().await.map_err(io_error)?;
        let stored = async {
            let tx = client.transaction().await?;
            if let Some(copy) = &copy {
                let chunks: Vec<&[u8]> = copy.chunks(CHUNK).collect();
                put(&tx, id, JUNIT, &chunks).await?;
            }
            let chunks: Vec<&[u8]> = json.chunks(CHUNK).collect();
            put(&tx, id, REPORT, &chunks).await?;
            tx.commit().await
        }
        .await;
        stored.map_err(from_pg)
    }

    async fn report(&self, id: &str) -> io::Result<Option<TestReport>> {
        match self.read_all(id, REPORT).await? {
            Some(json) => serde_json::from_slice(&json)
                .map(Some)
                .map_err(io::Error::other),
            None => Ok(None),
        }
    }

    async fn junit(&self, id: &str) -> io::Result<Option<Kept>> {
        Ok(self.read_all(id, JUNIT).await?.map(Kept::Bytes))
    }

    /// Packs to an unnamed private temporary file first, then stores it chunk by chunk.
    async fn keep_artifacts(&self, id: &str, dir: &Path, cap: u64) -> io::Result<Option<Packed>> {
        let dir = dir.to_path_buf();
        let packed = blocking(move || {
            if crate::results::is_empty_dir(&dir)? {
                return Ok(None);
            }
            let mut file = scratch_file()?;
            let packed = artifacts::pack(&dir, io::BufWriter::new(&mut file), cap)?;
            use std::io::Seek;
            file.seek(io::SeekFrom::Start(0))?;
            Ok(Some((packed, file)))
        })
        .await?;
        let Some((packed, file)) = packed else {
            return Ok(None);
        };
        let mut client = self.pg.client().await.map_err(io_error)?;
        let tx = client.transaction().await.map_err(from_pg)?;
        tx.execute(
            "DELETE FROM results WHERE job = $1 AND name = $2",
            &[&id, &ARTIFACTS],
        )
        .await
        .map_err(from_pg)?;
        let insert = tx
            .prepare("INSERT INTO results (job, name, idx, bytes) VALUES ($1, $2, $3, $4)")
            .await
            .map_err(from_pg)?;
        let mut file = Some(file);
        let mut idx: i32 = 0;
        loop {
            let mut f = file.take().expect("the file comes back after each read");
            let (f, chunk) = blocking(move || {
                let mut chunk = Vec::with_capacity(CHUNK);
                (&mut f).take(CHUNK as u64).read_to_end(&mut chunk)?;
                Ok((f, chunk))
            })
            .await?;
            file = Some(f);
            if chunk.is_empty() && idx > 0 {
                break;
            }
            tx.execute(&insert, &[&id, &ARTIFACTS, &idx, &chunk])
                .await
                .map_err(from_pg)?;
            idx += 1;
            if chunk.len() < CHUNK {
                break;
            }
        }
        tx.commit().await.map_err(from_pg)?;
        Ok(Some(packed))
    }

    /// Streamed a row at a time: an archive is not held in memory whole.
    async fn artifacts(&self, id: &str) -> io::Result<Option<Kept>> {
        let client = self.pg.client().await.map_err(io_error)?;
        let row = client
            .query_one(
                "SELECT count(*), coalesce(sum(length(bytes)), 0)::bigint FROM results \
                 WHERE job = $1 AND name = $2",
                &[&id, &ARTIFACTS],
            )
            .await
            .map_err(from_pg)?;
        let (rows, len): (i64, i64) = (row.get(0), row.get(1));
        if rows == 0 {
            return Ok(None);
        }
        let (pg, id) = (self.pg.clone(), id.to_string());
        let stream = futures_util::stream::try_unfold(0i32, move |idx| {
            let (pg, id) = (pg.clone(), id.clone());
            async move {
                if i64::from(idx) >= rows {
                    return Ok(None);
                }
                let client = pg.client().await.map_err(io_error)?;
                let row = client
                    .query_opt(
                        "SELECT bytes FROM results WHERE job = $1 AND name = $2 AND idx = $3",
                        &[&id, &ARTIFACTS, &idx],
                    )
                    .await
                    .map_err(from_pg)?;
                let Some(row) = row else {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("the artifacts of job {id} were removed while being read"),
                    ));
                };
                Ok(Some((Bytes::from(row.get::<_, Vec<u8>>(0)), idx + 1)))
            }
        });
        Ok(Some(Kept::Stream {
            len: len as u64,
            stream: Box::pin(stream),
        }))
    }

    async fn remove(&self, id: &str) -> io::Result<()> {
        let client = self.pg.client().await.map_err(io_error)?;
        client
            .execute("DELETE FROM results WHERE job = $1", &[&id])
            .await
            .map_err(from_pg)?;
        Ok(())
    }
}

/// A private temporary file that no other process can open: created 0600 under a random
/// name in the temporary directory, and unlinked at once. Blocking.
fn scratch_file() -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = std::env::temp_dir().join(format!(
        ".ci-server-artifacts-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pg_results_conform() {
        let url = tokio::task::spawn_blocking(|| ci_e2e::postgres::shared().fresh_database())
            .await
            .unwrap();
        let pg = Pg::connect(&url).await.unwrap();
        crate::results::conformance::run(std::sync::Arc::new(PgResults::new(pg.clone()))).await;
        // Stored in chunks of at most a MiB.
        let client = pg.client().await.unwrap();
        let longest: Option<i32> = client
            .query_one("SELECT max(length(bytes)) FROM results", &[])
            .await
            .unwrap()
            .get(0);
        assert!(longest.is_some_and(|n| n as usize <= CHUNK));
    }

    /// Another node reads what one node kept.
    #[tokio::test]
    async fn any_node_serves_what_a_worker_kept() {
        let url = tokio::task::spawn_blocking(|| ci_e2e::postgres::shared().fresh_database())
            .await
            .unwrap();
        let worker = PgResults::new(Pg::connect(&url).await.unwrap());
        let api = PgResults::new(Pg::connect(&url).await.unwrap());
        let dir = tempfile::tempdir().unwrap();
        let junit = dir.path().join("junit.xml");
        std::fs::write(&junit, "<testsuite tests=\"1\"/>").unwrap();
        let report = TestReport::default();
        worker.keep_report("j", &report, &junit).await.unwrap();
        assert_eq!(api.report("j").await.unwrap(), Some(report));
        let kept = api.junit("j").await.unwrap().unwrap();
        assert_eq!(
            kept.into_bytes().await.unwrap(),
            b"<testsuite tests=\"1\"/>"
        );
    }
}
