//! API keys and who is calling: key generation, hashing, and the extractor every endpoint but
//! `/healthz` goes through. A valid key also lifts the request's connection out of its
//! address's cap on unauthenticated connections (`listener::ConnectionAuth`).
//!
//! A key is `ci_` followed by 64 hex digits (256 random bits). Its first 8 hex digits are the
//! key's public id, so a lookup needs no scan and no secret-dependent index; the SHA-256 of the
//! whole key is compared in constant time. Keys are never stored or logged.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::accounts::Accounts;
use crate::error::ApiError;
use crate::model::{now_ms, ApiKey, Role, User};
use crate::store::StoreError;
use crate::AppState;

pub const KEY_PREFIX: &str = "ci_";
const ID_LEN: usize = 8;

/// A fresh key and its record, not stored (see [`create_key`]).
pub fn new_key(user_id: &str, name: &str) -> (String, ApiKey) {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let key = format!("{KEY_PREFIX}{}", hex::encode(secret));
    let id = key[KEY_PREFIX.len()..KEY_PREFIX.len() + ID_LEN].to_string();
    let record = ApiKey {
        id,
        user_id: user_id.to_string(),
        name: name.to_string(),
        hash: hash_key(&key),
        created_ms: now_ms(),
        last_used_ms: None,
        revoked: false,
    };
    (key, record)
}

/// A fresh key of the user, stored durably; its id is unique among the stored keys.
pub async fn create_key(
    db: &dyn Accounts,
    user_id: &str,
    name: &str,
) -> Result<(String, ApiKey), StoreError> {
    loop {
        let (key, record) = new_key(user_id, name);
        if db.add_key(&record).await? {
            return Ok((key, record));
        }
    }
}

pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The key id of something shaped like a key, else `None`.
fn key_id(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    (rest.len() == 64 && rest.bytes().all(|b| b.is_ascii_hexdigit())).then(|| &rest[..ID_LEN])
}

/// Checks a presented key: the user it belongs to, or why not.
pub async fn authenticate(state: &AppState, presented: &str) -> Result<User, ApiError> {
    let unknown = || ApiError::Unauthorized("unknown or revoked API key".into());
    let id = key_id(presented).ok_or_else(unknown)?;
    let mut record = state.db.key(id).await?.ok_or_else(unknown)?;
    let matches: bool = hash_key(presented)
        .as_bytes()
        .ct_eq(record.hash.as_bytes())
        .into();
    if !matches || record.revoked {
        return Err(unknown());
    }
    let user = state.db.user(&record.user_id).await?.ok_or_else(unknown)?;
    if !user.active {
        return Err(ApiError::Forbidden(format!(
            "access denied: user {} is disabled (an admin can enable it again)",
            user.email
        )));
    }
    // Keep last-used roughly current without a write per request.
    let now = now_ms();
    if record.last_used_ms.is_none_or(|t| now - t > 60_000) {
        record.last_used_ms = Some(now);
        state.db.touch_key(&record).await?;
    }
    Ok(user)
}

/// The token of `Bearer <token>`; the scheme is case-insensitive (RFC 9110, section 11.1).
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The authenticated caller of a request.
pub struct Caller(pub User);

impl Caller {
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.0.role == Role::Admin {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "access denied: this needs an admin API key".into(),
            ))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| {
                ApiError::Unauthorized(
                    "missing API key (send 'Authorization: Bearer <key>')".into(),
                )
            })?;
        let presented = header.to_str().ok().and_then(bearer_token).ok_or_else(|| {
            ApiError::Unauthorized("malformed Authorization header: expected 'Bearer <key>'".into())
        })?;
        let user = authenticate(state, presented).await?;
        // The connection stops counting against its address's cap on unauthenticated ones.
        if let Some(connection) = parts.extensions.get::<crate::listener::ConnectionAuth>() {
            connection.authenticated();
        }
        Ok(Caller(user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed_random_and_hashed() {
        let (a, ra) = new_key("u", "laptop");
        let (b, _) = new_key("u", "laptop");
        assert_ne!(a, b);
        assert!(a.starts_with("ci_") && a.len() == 67);
        assert_eq!(key_id(&a), Some(ra.id.as_str()));
        assert_eq!(ra.hash, hash_key(&a));
        assert!(!ra.hash.contains(&a[3..]));
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer_token("Bearer ci_x"), Some("ci_x"));
        assert_eq!(bearer_token("bearer  ci_x "), Some("ci_x"));
        assert_eq!(bearer_token("Basic ci_x"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("ci_x"), None);
    }

    #[test]
    fn key_shapes() {
        assert_eq!(key_id("ci_"), None);
        assert_eq!(key_id(&format!("ci_{}", "g".repeat(64))), None);
        assert_eq!(key_id(&format!("xx_{}", "a".repeat(64))), None);
        assert_eq!(key_id(&format!("ci_{}", "a".repeat(64))), Some("aaaaaaaa"));
    }
}
