//! Users and API keys in the cluster's database: [`Accounts`] for [`Pg`]. Each row keeps the
//! record as the embedded store serializes it (`record`), beside the columns queries need.

use async_trait::async_trait;
use serde::de::DeserializeOwned;

use super::{store_error, Pg, PgError};
use crate::accounts::Accounts;
use crate::model::{ApiKey, User};
use crate::store::StoreError;

fn decode<T: DeserializeOwned>(
    table: &'static str,
    value: serde_json::Value,
) -> Result<T, StoreError> {
    serde_json::from_value(value).map_err(|source| store_error(PgError::Corrupt { table, source }))
}

fn encode(value: &impl serde::Serialize) -> Result<serde_json::Value, StoreError> {
    serde_json::to_value(value).map_err(StoreError::backend)
}

impl Pg {
    async fn one<T: DeserializeOwned>(
        &self,
        table: &'static str,
        sql: &str,
        param: &str,
    ) -> Result<Option<T>, StoreError> {
        let client = self.client().await.map_err(store_error)?;
        let row = client
            .query_opt(sql, &[&param])
            .await
            .map_err(store_error)?;
        row.map(|r| decode(table, r.get(0))).transpose()
    }

    async fn all<T: DeserializeOwned>(
        &self,
        table: &'static str,
        sql: &str,
    ) -> Result<Vec<T>, StoreError> {
        let client = self.client().await.map_err(store_error)?;
        let rows = client.query(sql, &[]).await.map_err(store_error)?;
        rows.into_iter().map(|r| decode(table, r.get(0))).collect()
    }
}

#[async_trait]
impl Accounts for Pg {
    async fn put_user(&self, user: &User) -> Result<(), StoreError> {
        let record = encode(user)?;
        let client = self.client().await.map_err(store_error)?;
        client
            .execute(
                "INSERT INTO users (id, email, record) VALUES ($1, $2, $3) \
                 ON CONFLICT (id) DO UPDATE SET email = excluded.email, record = excluded.record",
                &[&user.id, &user.email, &record],
            )
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn user(&self, id: &str) -> Result<Option<User>, StoreError> {
        self.one("users", "SELECT record FROM users WHERE id = $1", id)
            .await
    }

    async fn users(&self) -> Result<Vec<User>, StoreError> {
        self.all(
            "users",
            "SELECT record FROM users ORDER BY (record->>'created_ms')::bigint, id",
        )
        .await
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        self.one(
            "users",
            "SELECT record FROM users WHERE lower(email) = lower($1) \
             ORDER BY (record->>'created_ms')::bigint, id LIMIT 1",
            email,
        )
        .await
    }

    async fn add_key(&self, key: &ApiKey) -> Result<bool, StoreError> {
        let record = encode(key)?;
        let client = self.client().await.map_err(store_error)?;
        let inserted = client
            .execute(
                "INSERT INTO api_keys (id, user_id, record) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING",
                &[&key.id, &key.user_id, &record],
            )
            .await
            .map_err(store_error)?;
        Ok(inserted == 1)
    }

    async fn put_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let record = encode(key)?;
        let client = self.client().await.map_err(store_error)?;
        client
            .execute(
                "INSERT INTO api_keys (id, user_id, record) VALUES ($1, $2, $3) \
                 ON CONFLICT (id) DO UPDATE SET user_id = excluded.user_id, record = excluded.record",
                &[&key.id, &key.user_id, &record],
            )
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// Only the time of last use changes: a revocation written meanwhile by another node
    /// stays.
    async fn touch_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let last_used = encode(&key.last_used_ms)?;
        let client = self.client().await.map_err(store_error)?;
        client
            .execute(
                "UPDATE api_keys SET record = jsonb_set(record, '{last_used_ms}', $2) \
                 WHERE id = $1",
                &[&key.id, &last_used],
            )
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        self.one("api_keys", "SELECT record FROM api_keys WHERE id = $1", id)
            .await
    }

    async fn keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        self.all(
            "api_keys",
            "SELECT record FROM api_keys ORDER BY (record->>'created_ms')::bigint, id",
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pg_accounts_conform() {
        let url = ci_e2e::postgres::shared().fresh_database();
        let pg = Pg::connect(&url).await.unwrap();
        crate::accounts::conformance::run(&pg).await;
    }
}
