//! Admin endpoints under `/v1/admin`: users and their API keys, and the server's images. The
//! server holds the sled database open, so administration goes through it over HTTP (`ci admin
//! ...`, `ci-server image ...`), also while jobs run. Every handler needs an admin caller; a
//! key is returned only by `POST /v1/admin/keys`, once, and never logged (only its short id is).

use axum::body::Bytes;
use axum::extract::State;

use crate::api::{ApiPath, ApiQuery};
use axum::http::StatusCode;
use axum::Json;
use ci_protocol::{
    CreatedKey, ImageView, ImportImage, KeyQuery, KeyView, NewKey, NewUser, PythonView, Role,
    UserView,
};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::model::{key_view, now_ms, ApiKey, User};
use crate::AppState;

/// Serializes the check-then-write of admin changes (duplicate emails, the last admin), so two
/// concurrent requests cannot both pass a check that only one of them should.
static WRITES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MAX_NAME: usize = 100;
const MAX_EMAIL: usize = 254;

/// `POST /v1/admin/users`: 201 with the user; 409 if the email is taken.
pub async fn create_user(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    caller.require_admin()?;
    let new: NewUser = parse(&body)?;
    let name = valid_name("name", &new.name)?;
    let email = valid_email(&new.email)?;
    let _guard = WRITES.lock().await;
    if state.db.user_by_email(&email).await?.is_some() {
        return Err(ApiError::Conflict(format!(
            "a user with email {email} already exists"
        )));
    }
    let user = User {
        id: uuid::Uuid::new_v4().simple().to_string(),
        name,
        email,
        role: new.role.unwrap_or(Role::User),
        active: true,
        created_ms: now_ms(),
    };
    state.db.put_user(&user).await?;
    tracing::info!(by = %caller.0.email, user = %user.email, role = user.role.as_str(), "user created");
    Ok((StatusCode::CREATED, Json((&user).into())))
}

/// `GET /v1/admin/users`: every user, oldest first.
pub async fn list_users(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<UserView>>, ApiError> {
    caller.require_admin()?;
    let users = state.db.users().await?;
    Ok(Json(users.iter().map(UserView::from).collect()))
}

/// `POST /v1/admin/users/{email}/disable`: the user's keys answer 403 from the next request on.
pub async fn disable_user(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(email): ApiPath<String>,
) -> Result<Json<UserView>, ApiError> {
    set_active(state, caller, &email, false).await
}

/// `POST /v1/admin/users/{email}/enable`.
pub async fn enable_user(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(email): ApiPath<String>,
) -> Result<Json<UserView>, ApiError> {
    set_active(state, caller, &email, true).await
}

async fn set_active(
    state: AppState,
    caller: Caller,
    email: &str,
    active: bool,
) -> Result<Json<UserView>, ApiError> {
    caller.require_admin()?;
    let _guard = WRITES.lock().await;
    let mut user = user_by_email(&state, email).await?;
    if !active && user.active && user.role == Role::Admin {
        let other_admins = state
            .db
            .users()
            .await?
            .iter()
            .filter(|u| u.role == Role::Admin && u.active && u.id != user.id)
            .count();
        if other_admins == 0 {
            return Err(ApiError::Conflict(format!(
                "{} is the only active admin: it cannot be disabled",
                user.email
            )));
        }
    }
    if user.active != active {
        user.active = active;
        state.db.put_user(&user).await?;
        let what = if active { "enabled" } else { "disabled" };
        tracing::info!(by = %caller.0.email, user = %user.email, "user {what}");
        if !active {
            // A disabled account may be a compromised one: its work stops with it.
            let stopped = state.jobs.stop_all_of(&user.id).await?;
            if stopped > 0 {
                tracing::info!(user = %user.email, jobs = stopped, "stopped the disabled user's jobs");
            }
        }
    }
    Ok(Json((&user).into()))
}

/// `POST /v1/admin/keys`: 201 with the new key for the user with that email.
pub async fn create_key(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    caller.require_admin()?;
    let new: NewKey = parse(&body)?;
    let name = valid_name("key name", &new.name)?;
    let _guard = WRITES.lock().await;
    let user = user_by_email(&state, new.email.trim()).await?;
    let (key, record) = crate::auth::create_key(&*state.db, &user.id, &name).await?;
    tracing::info!(by = %caller.0.email, user = %user.email, key_id = %record.id, "API key created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            view: key_view(&record, &user.email),
            key,
        }),
    ))
}

/// `GET /v1/admin/keys[?email=E]`: keys (never the keys themselves), oldest first.
pub async fn list_keys(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<KeyQuery>,
) -> Result<Json<Vec<KeyView>>, ApiError> {
    caller.require_admin()?;
    let users = state.db.users().await?;
    let only = match q.email.as_deref() {
        Some(email) => Some(user_by_email(&state, email).await?.id),
        None => None,
    };
    let views = state
        .db
        .keys()
        .await?
        .iter()
        .filter(|k| only.as_ref().is_none_or(|id| &k.user_id == id))
        .map(|k| {
            let email = users
                .iter()
                .find(|u| u.id == k.user_id)
                .map_or("?", |u| u.email.as_str());
            key_view(k, email)
        })
        .collect();
    Ok(Json(views))
}

/// `DELETE /v1/admin/keys/{id}`: revokes a key; it answers 401 from the next request on.
pub async fn revoke_key(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<KeyView>, ApiError> {
    caller.require_admin()?;
    let _guard = WRITES.lock().await;
    let not_found = || ApiError::NotFound(format!("API key {id}"));
    // Ids are 8 lowercase hex digits; anything else cannot name a key (and is not looked up).
    if id.len() != 8
        || !id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(not_found());
    }
    let mut key = state.db.key(&id).await?.ok_or_else(not_found)?;
    let owner = state.db.user(&key.user_id).await?;
    let email = owner.as_ref().map_or("?".to_string(), |u| u.email.clone());
    if !key.revoked {
        if let Some(owner) = owner.filter(|u| u.role == Role::Admin && u.active) {
            refuse_admin_lockout(&state, &owner, &key).await?;
        }
        key.revoked = true;
        state.db.put_key(&key).await?;
        tracing::info!(by = %caller.0.email, user = %email, key_id = %key.id, "API key revoked");
    }
    Ok(Json(key_view(&key, &email)))
}

/// Refuses to revoke the last working key of the last active admin: nobody could administer
/// the server any more (the database is only reachable through it).
async fn refuse_admin_lockout(
    state: &AppState,
    owner: &User,
    key: &ApiKey,
) -> Result<(), ApiError> {
    let admins: Vec<String> = state
        .db
        .users()
        .await?
        .into_iter()
        .filter(|u| u.role == Role::Admin && u.active)
        .map(|u| u.id)
        .collect();
    let other_working = state
        .db
        .keys()
        .await?
        .iter()
        .any(|k| !k.revoked && k.id != key.id && admins.contains(&k.user_id));
    if other_working {
        Ok(())
    } else {
        Err(ApiError::Conflict(format!(
            "key {} is the last working key of an active admin ({}): create another admin key first",
            key.id, owner.email
        )))
    }
}

/// `GET /v1/admin/images`: the images in the server's image cache, those it serves first.
pub async fn list_images(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<ImageView>>, ApiError> {
    caller.require_admin()?;
    Ok(Json(state.jobs.executor().images().await?))
}

/// `POST /v1/admin/images`: 201 with the Python of the image, served from now on. The path
/// is on the server's host, read by the server's user; it must be absolute (the server's
/// working directory means nothing to the caller).
pub async fn import_image(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Result<(StatusCode, Json<PythonView>), ApiError> {
    caller.require_admin()?;
    let new: ImportImage = parse(&body)?;
    let text = new.source.trim();
    let source: ci_rootfs::ImageSource = text
        .parse()
        .map_err(|e: ci_rootfs::Error| ApiError::BadRequest(e.to_string()))?;
    if source.path().is_some_and(|p| !p.is_absolute()) {
        return Err(ApiError::BadRequest(format!(
            "the image's path must be absolute (the server reads it on its own host): {text}"
        )));
    }
    let view = state.jobs.executor().import_image(source).await?;
    tracing::info!(by = %caller.0.email, image = %view.image, python = ?view.name, "image added");
    Ok((StatusCode::CREATED, Json(view)))
}

/// `DELETE /v1/admin/images/{digest}`: removes an image from the cache, and from what the
/// server serves if it was imported; 409 for the default and configured images, and while
/// jobs are queued or running on its Python.
pub async fn remove_image(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(digest): ApiPath<String>,
) -> Result<Json<ImageView>, ApiError> {
    caller.require_admin()?;
    let mut busy = std::collections::HashMap::<String, usize>::new();
    for job in state.store.list().await? {
        if let (false, Some(python)) = (job.status.is_terminal(), job.python) {
            *busy.entry(python).or_default() += 1;
        }
    }
    let count = |python: &str| busy.get(python).copied().unwrap_or(0);
    let view = state.jobs.executor().remove_image(&digest, &count).await?;
    tracing::info!(by = %caller.0.email, digest = %view.digest, "image removed");
    Ok(Json(view))
}

async fn user_by_email(state: &AppState, email: &str) -> Result<User, ApiError> {
    state
        .db
        .user_by_email(email.trim())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("user {}", email.trim())))
}

/// The JSON body, whatever its `Content-Type` says (`curl -d` sends a form type).
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

/// A trimmed, non-empty, printable name of at most `MAX_NAME` characters.
fn valid_name(what: &str, name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(ApiError::BadRequest(format!("{what} must not be empty")));
    }
    if name.chars().count() > MAX_NAME {
        return Err(ApiError::BadRequest(format!(
            "{what} is longer than {MAX_NAME} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(format!(
            "{what} must not contain control characters"
        )));
    }
    Ok(name.to_string())
}

/// `local@domain`, no spaces or control characters, lowercased (emails identify users and are
/// compared without case).
fn valid_email(email: &str) -> Result<String, ApiError> {
    let email = email.trim();
    let invalid = || {
        ApiError::BadRequest(format!(
            "invalid email {email:?}: expected something like name@example.com"
        ))
    };
    if email.len() > MAX_EMAIL
        || email
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '<' | '>' | '"'))
    {
        return Err(invalid());
    }
    let (local, domain) = email.split_once('@').ok_or_else(invalid)?;
    let domain_ok = !domain.is_empty()
        && !domain.contains('@')
        && domain
            .split('.')
            .all(|label| !label.is_empty() && !label.starts_with('-') && !label.ends_with('-'));
    if local.is_empty() || !domain_ok {
        return Err(invalid());
    }
    Ok(email.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(email: &str, expected: Option<&str>) {
        assert_eq!(valid_email(email).ok().as_deref(), expected, "{email:?}");
    }

    #[test]
    fn emails() {
        check("bob@example.com", Some("bob@example.com"));
        check(
            "  Bob.Smith+ci@Example.COM ",
            Some("bob.smith+ci@example.com"),
        );
        check("admin@localhost", Some("admin@localhost"));
        check("bob", None);
        check("@example.com", None);
        check("bob@", None);
        check("bob@@example.com", None);
        check("bob@exa mple.com", None);
        check("bob@example..com", None);
        check("bob@.example.com", None);
        check("bob@example.com.", None);
        check("bo/b@example.com", None);
        check("bob@-example.com", None);
        check(&format!("{}@example.com", "a".repeat(250)), None);
    }

    #[test]
    fn names() {
        assert_eq!(valid_name("name", "  Bob  ").unwrap(), "Bob");
        assert!(valid_name("name", "   ").is_err());
        assert!(valid_name("name", "a\nb").is_err());
        assert!(valid_name("name", &"x".repeat(101)).is_err());
        assert!(valid_name("name", &"é".repeat(100)).is_ok());
    }
}
