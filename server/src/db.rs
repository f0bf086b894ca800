//! Durable records in sled: jobs, users and API keys, stored as JSON values.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::model::{ApiKey, Job, User};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("failed to open the database at {path}: {source}")]
    Open { path: String, source: sled::Error },
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
    pub fn open(path: &Path) -> Result<Db, DbError> {
        let db = sled::open(path).map_err(|source| DbError::Open {
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
    pub async fn flush(&self) -> Result<(), DbError> {
        self.db.flush_async().await?;
        Ok(())
    }

    pub fn next_seq(&self) -> Result<u64, DbError> {
        Ok(self.db.generate_id()?)
    }

    pub fn put_job(&self, job: &Job) -> Result<(), DbError> {
        put(&self.jobs, &job.id, job)
    }

    pub fn job(&self, id: &str) -> Result<Option<Job>, DbError> {
        get(&self.jobs, "jobs", id)
    }

    /// All jobs, oldest first.
    pub fn jobs(&self) -> Result<Vec<Job>, DbError> {
        let mut jobs: Vec<Job> = all(&self.jobs, "jobs")?;
        jobs.sort_by_key(|j| j.seq);
        Ok(jobs)
    }

    pub fn put_user(&self, user: &User) -> Result<(), DbError> {
        put(&self.users, &user.id, user)
    }

    pub fn user(&self, id: &str) -> Result<Option<User>, DbError> {
        get(&self.users, "users", id)
    }

    pub fn users(&self) -> Result<Vec<User>, DbError> {
        let mut users: Vec<User> = all(&self.users, "users")?;
        users.sort_by_key(|u| u.created_ms);
        Ok(users)
    }

    pub fn user_by_email(&self, email: &str) -> Result<Option<User>, DbError> {
        Ok(self
            .users()?
            .into_iter()
            .find(|u| u.email.eq_ignore_ascii_case(email)))
    }

    pub fn put_key(&self, key: &ApiKey) -> Result<(), DbError> {
        put(&self.keys, &key.id, key)
    }

    pub fn key(&self, id: &str) -> Result<Option<ApiKey>, DbError> {
        get(&self.keys, "keys", id)
    }

    pub fn keys(&self) -> Result<Vec<ApiKey>, DbError> {
        let mut keys: Vec<ApiKey> = all(&self.keys, "keys")?;
        keys.sort_by_key(|k| k.created_ms);
        Ok(keys)
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
