//! Users and API keys, as a trait: the API sees only [`Accounts`]. The embedded store is
//! sled ([`crate::db::Db`]); a cluster's is PostgreSQL ([`crate::pg::Pg`]). Every write is
//! durable when it returns, except [`Accounts::touch_key`].

use async_trait::async_trait;

use crate::model::{ApiKey, User};
use crate::store::StoreError;

#[async_trait]
pub trait Accounts: Send + Sync + 'static {
    /// Stores a user (new or changed), durably.
    async fn put_user(&self, user: &User) -> Result<(), StoreError>;

    async fn user(&self, id: &str) -> Result<Option<User>, StoreError>;

    /// Every user, oldest first.
    async fn users(&self) -> Result<Vec<User>, StoreError>;

    /// The user with `email`, whatever its case.
    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError>;

    /// Stores a new key durably, unless a key with its id exists: then `false`, and nothing
    /// changed.
    async fn add_key(&self, key: &ApiKey) -> Result<bool, StoreError>;

    /// Stores a changed key, durably.
    async fn put_key(&self, key: &ApiKey) -> Result<(), StoreError>;

    /// Records a key's last use; need not be durable (a crash loses at most that time).
    async fn touch_key(&self, key: &ApiKey) -> Result<(), StoreError>;

    async fn key(&self, id: &str) -> Result<Option<ApiKey>, StoreError>;

    /// Every key, oldest first.
    async fn keys(&self) -> Result<Vec<ApiKey>, StoreError>;
}

/// One suite of behaviour every [`Accounts`] must show; each implementation runs it.
#[cfg(test)]
pub mod conformance {
    use super::*;
    use crate::model::Role;

    pub fn user(id: &str, email: &str, created_ms: i64) -> User {
        User {
            id: id.into(),
            name: format!("name of {id}"),
            email: email.into(),
            role: Role::User,
            active: true,
            created_ms,
        }
    }

    pub fn key(id: &str, user_id: &str, created_ms: i64) -> ApiKey {
        ApiKey {
            id: id.into(),
            user_id: user_id.into(),
            name: "k".into(),
            hash: format!("hash-{id}"),
            created_ms,
            last_used_ms: None,
            revoked: false,
        }
    }

    /// Runs every check against a fresh, empty store.
    pub async fn run(accounts: &dyn Accounts) {
        assert!(accounts.users().await.unwrap().is_empty());
        accounts
            .put_user(&user("u2", "B@example.com", 20))
            .await
            .unwrap();
        accounts
            .put_user(&user("u1", "a@example.com", 10))
            .await
            .unwrap();
        let ids: Vec<String> = accounts
            .users()
            .await
            .unwrap()
            .into_iter()
            .map(|u| u.id)
            .collect();
        assert_eq!(ids, ["u1", "u2"], "oldest first");
        let found = accounts.user_by_email("b@EXAMPLE.com").await.unwrap();
        assert_eq!(found.map(|u| u.id).as_deref(), Some("u2"));
        assert!(accounts
            .user_by_email("c@example.com")
            .await
            .unwrap()
            .is_none());
        let mut changed = user("u1", "a@example.com", 10);
        changed.active = false;
        accounts.put_user(&changed).await.unwrap();
        assert!(!accounts.user("u1").await.unwrap().unwrap().active);
        assert!(accounts.user("nobody").await.unwrap().is_none());

        assert!(accounts.add_key(&key("k2", "u1", 2)).await.unwrap());
        assert!(accounts.add_key(&key("k1", "u1", 1)).await.unwrap());
        let mut other = key("k1", "u2", 5);
        other.hash = "other".into();
        assert!(!accounts.add_key(&other).await.unwrap(), "ids are unique");
        assert_eq!(accounts.key("k1").await.unwrap().unwrap().hash, "hash-k1");
        let mut used = key("k1", "u1", 1);
        used.last_used_ms = Some(99);
        accounts.touch_key(&used).await.unwrap();
        assert_eq!(
            accounts.key("k1").await.unwrap().unwrap().last_used_ms,
            Some(99)
        );
        used.revoked = true;
        accounts.put_key(&used).await.unwrap();
        assert!(accounts.key("k1").await.unwrap().unwrap().revoked);
        let ids: Vec<String> = accounts
            .keys()
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.id)
            .collect();
        assert_eq!(ids, ["k1", "k2"], "oldest first");
        assert!(accounts.key("none").await.unwrap().is_none());
    }
}
