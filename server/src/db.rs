//! Durable records in sled: jobs, users and API keys, stored as JSON values. The directory
//! is the server's user's only (0700): it holds emails and key hashes.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::lifecycle::{self, Transition};
use crate::model::{ApiKey, Job, User};
use crate::store::{JobStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("failed to open the database at {path}: {source}")]
    Open { path: String, source: sled::Error },
    #[error("failed to make the database at {path} private to this user: {source}")]
    Private {
        path: String,
        source: std::io::Error,
    },
    #[error("database error: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt record in {tree}: {source}")]
    Corrupt {
        tree: &'static str,
        source: serde_json::Error,
    },
}

/// The server's database. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    db: sled::Db,
    jobs: sled::Tree,
    users: sled::Tree,
    keys: sled::Tree,
}

impl Db {
    /// Opens (or creates) the database at `path`, first making the directory private: a
    /// new one is made 0700, an older one open to others is tightened with its files.
    /// Blocking.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        crate::perms::private_dir(path).map_err(|source| DbError::Private {
            path: path.display().to_string(),
            source,
        })?;
        let db = sled::open(path).map_err(|source| DbError::Open {
            path: path.display().to_string(),
            source,
        })?;
        // sled writes a snapshot file as it opens, with the umask's mode: the directory
        // already shuts others out, the files are tightened too for good measure.
        crate::perms::tighten(path).map_err(|source| DbError::Private {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Db {
            jobs: db.open_tree("jobs")?,
            users: db.open_tree("users")?,
            keys: db.open_tree("keys")?,
            db,
        })
    }

    /// Makes every write so far durable. Called after each status change, so a crash of the
    /// server (even SIGKILL) loses no job transition that a client was told about.
    ///
    /// The wait runs on tokio's blocking pool, never through `flush_async`: that one waits on
    /// sled's own I/O pool, whose threads then wait for log writes queued behind them on that
    /// same pool, and about ten flushes at once (ten concurrent submissions) deadlocked every
    /// one of them.
    pub async fn flush(&self) -> Result<(), DbError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| std::io::Error::other(format!("database flush task failed: {e}")))
            .map_err(sled::Error::Io)??;
        Ok(())
    }

    fn put_job(&self, job: &Job) -> Result<(), DbError> {
        put(&self.jobs, &job.id, job)
    }

    fn job(&self, id: &str) -> Result<Option<Job>, DbError> {
        get(&self.jobs, "jobs", id)
    }

    /// Applies a transition to the stored record with a compare-and-swap, so that a writer
    /// in between (a cancel racing the job's end) makes this one start over from its record.
    fn apply(&self, id: &str, transition: &Transition) -> Result<Job, StoreError> {
        loop {
            let Some(old) = self.jobs.get(id.as_bytes()).map_err(backend)? else {
                return Err(StoreError::NotFound(id.into()));
            };
            let mut job: Job = serde_json::from_slice(&old).map_err(|source| {
                backend(DbError::Corrupt {
                    tree: "jobs",
                    source,
                })
            })?;
            lifecycle::apply(&mut job, transition)?;
            let new = serde_json::to_vec(&job).expect("records serialize");
            let swapped = self
                .jobs
                .compare_and_swap(id.as_bytes(), Some(old), Some(new))
                .map_err(backend)?;
            if swapped.is_ok() {
                return Ok(job);
            }
        }
    }

    /// Records that a finished job's log was removed at `at_ms` (see `retention`). Only
    /// this field changes, atomically with respect to other writers of the record; a job
    /// that is missing, not finished or already expired is left as it is. Returns whether
    /// the record changed.
    fn mark_expired(&self, id: &str, at_ms: i64) -> Result<bool, DbError> {
        let mut changed = false;
        self.jobs.fetch_and_update(id.as_bytes(), |old| {
            // sled may call this more than once: decide afresh each time.
            changed = false;
            let old = old?;
            let mut job: Job = match serde_json::from_slice(old) {
                Ok(job) => job,
                // Never drop a record we cannot read: returning None would delete it.
                Err(_) => return Some(old.to_vec()),
            };
            if !job.status.is_terminal() || job.expired_ms.is_some() {
                return Some(old.to_vec());
            }
            job.expired_ms = Some(at_ms);
            changed = true;
            Some(serde_json::to_vec(&job).expect("records serialize"))
        })?;
        Ok(changed)
    }

    /// All jobs, oldest first.
    fn jobs(&self) -> Result<Vec<Job>, DbError> {
        let mut jobs: Vec<Job> = all(&self.jobs, "jobs")?;
        jobs.sort_by_key(|j| j.seq);
        Ok(jobs)
    }

    fn all_users(&self) -> Result<Vec<User>, DbError> {
        let mut users: Vec<User> = all(&self.users, "users")?;
        users.sort_by_key(|u| u.created_ms);
        Ok(users)
    }
}

#[async_trait::async_trait]
impl crate::accounts::Accounts for Db {
    // Users and API keys: like the jobs, every call runs on the blocking pool (a scan reads
    // every record, a lookup may read the disk, a durable write waits for it).

    /// Stores a user, durably.
    async fn put_user(&self, user: &User) -> Result<(), StoreError> {
        let (db, user) = (self.clone(), user.clone());
        blocking_db(move || {
            put(&db.users, &user.id, &user)?;
            db.db.flush()?;
            Ok(())
        })
        .await
        .map_err(backend)
    }

    async fn user(&self, id: &str) -> Result<Option<User>, StoreError> {
        let (db, id) = (self.clone(), id.to_string());
        blocking_db(move || get(&db.users, "users", &id))
            .await
            .map_err(backend)
    }

    /// Every user, oldest first.
    async fn users(&self) -> Result<Vec<User>, StoreError> {
        let db = self.clone();
        blocking_db(move || db.all_users()).await.map_err(backend)
    }

    /// The user with `email`, whatever its case.
    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let (db, email) = (self.clone(), email.to_string());
        blocking_db(move || {
            Ok(db
                .all_users()?
                .into_iter()
                .find(|u| u.email.eq_ignore_ascii_case(&email)))
        })
        .await
        .map_err(backend)
    }

    /// Stores a new key durably, unless a key with its id exists: then `false`, and nothing
    /// changed.
    async fn add_key(&self, key: &ApiKey) -> Result<bool, StoreError> {
        let (db, key) = (self.clone(), key.clone());
        blocking_db(move || {
            let bytes = serde_json::to_vec(&key).expect("records serialize");
            let added = db
                .keys
                .compare_and_swap(key.id.as_bytes(), None::<&[u8]>, Some(bytes))?
                .is_ok();
            if added {
                db.db.flush()?;
            }
            Ok(added)
        })
        .await
        .map_err(backend)
    }

    /// Stores a changed key, durably.
    async fn put_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let (db, key) = (self.clone(), key.clone());
        blocking_db(move || {
            put(&db.keys, &key.id, &key)?;
            db.db.flush()?;
            Ok(())
        })
        .await
        .map_err(backend)
    }

    /// Records a key's last use. Not flushed: a crash loses at most that time.
    async fn touch_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let (db, key) = (self.clone(), key.clone());
        blocking_db(move || put(&db.keys, &key.id, &key))
            .await
            .map_err(backend)
    }

    async fn key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        let (db, id) = (self.clone(), id.to_string());
        blocking_db(move || get(&db.keys, "keys", &id))
            .await
            .map_err(backend)
    }

    /// Every key, oldest first.
    async fn keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let db = self.clone();
        blocking_db(move || {
            let mut keys: Vec<ApiKey> = all(&db.keys, "keys")?;
            keys.sort_by_key(|k| k.created_ms);
            Ok(keys)
        })
        .await
        .map_err(backend)
    }
}

/// Runs sled work on the blocking pool, for the users and keys.
async fn blocking_db<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DbError> + Send + 'static,
) -> Result<T, DbError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        DbError::Sled(sled::Error::Io(std::io::Error::other(format!(
            "database task failed: {e}"
        ))))
    })?
}

fn backend(e: impl Into<DbError>) -> StoreError {
    StoreError::backend(e.into())
}

/// Runs sled work on the blocking pool: reads may go to disk, and a flush waits for it.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        StoreError::backend(std::io::Error::other(format!("database task failed: {e}")))
    })?
}

/// Jobs in sled: each write is flushed before it returns.
#[async_trait::async_trait]
impl JobStore for Db {
    async fn next_seq(&self) -> Result<u64, StoreError> {
        let db = self.clone();
        blocking(move || db.db.generate_id().map_err(backend)).await
    }

    async fn submit(&self, job: &Job) -> Result<(), StoreError> {
        let (db, job) = (self.clone(), job.clone());
        blocking(move || {
            db.put_job(&job).map_err(backend)?;
            db.db.flush().map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn apply(&self, id: &str, transition: &Transition) -> Result<Job, StoreError> {
        let (db, id, transition) = (self.clone(), id.to_string(), transition.clone());
        blocking(move || {
            let job = db.apply(&id, &transition)?;
            db.db.flush().map_err(backend)?;
            Ok(job)
        })
        .await
    }

    async fn withdraw(&self, id: &str) -> Result<(), StoreError> {
        let (db, id) = (self.clone(), id.to_string());
        blocking(move || {
            db.jobs.remove(id.as_bytes()).map_err(backend)?;
            db.db.flush().map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn get(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let (db, id) = (self.clone(), id.to_string());
        blocking(move || db.job(&id).map_err(backend)).await
    }

    async fn list(&self) -> Result<Vec<Job>, StoreError> {
        let db = self.clone();
        blocking(move || db.jobs().map_err(backend)).await
    }

    async fn mark_expired(&self, id: &str, at_ms: i64) -> Result<bool, StoreError> {
        let (db, id) = (self.clone(), id.to_string());
        blocking(move || {
            let changed = db.mark_expired(&id, at_ms).map_err(backend)?;
            if changed {
                db.db.flush().map_err(backend)?;
            }
            Ok(changed)
        })
        .await
    }
}

fn put<T: Serialize>(tree: &sled::Tree, id: &str, value: &T) -> Result<(), DbError> {
    let bytes = serde_json::to_vec(value).expect("records serialize");
    tree.insert(id.as_bytes(), bytes)?;
    Ok(())
}

fn get<T: DeserializeOwned>(
    tree: &sled::Tree,
    name: &'static str,
    id: &str,
) -> Result<Option<T>, DbError> {
    match tree.get(id.as_bytes())? {
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| DbError::Corrupt { tree: name, source }),
        None => Ok(None),
    }
}

fn all<T: DeserializeOwned>(tree: &sled::Tree, name: &'static str) -> Result<Vec<T>, DbError> {
    tree.iter()
        .values()
        .map(|v| {
            serde_json::from_slice(&v?).map_err(|source| DbError::Corrupt { tree: name, source })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::Accounts;
    use crate::model::Status;
    use std::os::unix::fs::PermissionsExt;

    /// Many flushes at once, each after its own write, all finish: sled's `flush_async`
    /// deadlocked here once its I/O pool was full of waiting flushes (and then blocked the
    /// runtime's workers too, so the watch is kept on a thread of its own).
    #[test]
    fn concurrent_flushes_all_finish() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db")).unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let writer = db.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(4)
                .build()
                .unwrap();
            runtime.block_on(async move {
                let flushes = (0..64).map(|i| {
                    let db = writer.clone();
                    tokio::spawn(async move {
                        for round in 0..10 {
                            db.put_job(&job(&format!("j{i}-{round}"), Status::Queued))
                                .unwrap();
                            db.flush().await.unwrap();
                        }
                    })
                });
                futures_util::future::join_all(flushes).await;
            });
            let _ = done_tx.send(());
        });
        done_rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("concurrent flushes deadlocked");
        assert_eq!(db.jobs().unwrap().len(), 640);
    }

    #[tokio::test]
    async fn sled_accounts_conform() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db")).unwrap();
        crate::accounts::conformance::run(&db).await;
    }

    #[tokio::test]
    async fn users_and_keys() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db")).unwrap();
        for (id, email, created_ms) in [("b", "Bob@Example.com", 2), ("a", "al@example.com", 1)] {
            let user = User {
                id: id.into(),
                name: id.into(),
                email: email.into(),
                role: crate::model::Role::User,
                active: true,
                created_ms,
            };
            db.put_user(&user).await.unwrap();
        }
        let ids: Vec<String> = db
            .users()
            .await
            .unwrap()
            .into_iter()
            .map(|u| u.id)
            .collect();
        assert_eq!(ids, ["a", "b"]);
        let bob = db.user_by_email("bob@example.COM").await.unwrap().unwrap();
        assert_eq!(bob.id, "b");
        assert!(db
            .user_by_email("carol@example.com")
            .await
            .unwrap()
            .is_none());
        assert_eq!(db.user("a").await.unwrap().unwrap().email, "al@example.com");

        let (_, key) = crate::auth::new_key("b", "laptop");
        assert!(db.add_key(&key).await.unwrap());
        // An id that is taken is refused, and the stored key stays as it was.
        let mut other = key.clone();
        other.name = "other".into();
        assert!(!db.add_key(&other).await.unwrap());
        assert_eq!(db.key(&key.id).await.unwrap().unwrap().name, "laptop");
        let mut revoked = key.clone();
        revoked.revoked = true;
        db.put_key(&revoked).await.unwrap();
        let mut used = revoked.clone();
        used.last_used_ms = Some(5);
        db.touch_key(&used).await.unwrap();
        let keys = db.keys().await.unwrap();
        assert_eq!(keys.len(), 1);
        assert!(keys[0].revoked);
        assert_eq!(keys[0].last_used_ms, Some(5));
    }

    #[tokio::test]
    async fn sled_store_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let opened = std::sync::atomic::AtomicUsize::new(0);
        crate::store::conformance::run(|| {
            let n = opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Db::open(&dir.path().join(format!("db{n}"))).unwrap()
        })
        .await;
    }

    fn job(id: &str, status: Status) -> Job {
        Job {
            status,
            finished_ms: status.is_terminal().then_some(2),
            ..Job::queued(id, "u", 1, 1, 60)
        }
    }

    #[test]
    fn the_database_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        drop(Db::open(&path).unwrap());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o700);
        // Files sled made in the open directory are tightened at the next start.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        drop(Db::open(&path).unwrap());
        for entry in std::fs::read_dir(&path).unwrap() {
            let p = entry.unwrap().path();
            assert_eq!(mode(&p) & 0o077, 0, "{}", p.display());
        }
    }
}
