//! The one error type of the HTTP API: it picks the status, logs internals on the server and
//! sends the client a short JSON body `{"error": "<human message>"}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("authentication failed: {0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    /// Also what another user's job looks like: its existence is not revealed.
    #[error("{0} not found")]
    NotFound(String),
    /// 404 for a part of a job that does not exist (yet), said in full.
    #[error("{0}")]
    Absent(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    /// 410: it existed and was removed for good (the log of an expired job).
    #[error("{0}")]
    Gone(String),
    /// 408: the request (an upload) took longer than the server allows.
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unavailable(String),
    /// 503 with `Retry-After`: the server is busy with others' requests (e.g. uploads).
    #[error("{message}")]
    Busy {
        message: String,
        retry_after_secs: u64,
    },
    /// 429 with `Retry-After`: the caller is over one of its own caps.
    #[error("{message}")]
    TooManyRequests {
        message: String,
        retry_after_secs: u64,
    },
    /// 507: the server's disk is too full to take the request.
    #[error("{0}")]
    InsufficientStorage(String),
    /// 416 with `Content-Range: bytes */LENGTH`: a log offset past the end.
    #[error("{message}")]
    RangeNotSatisfiable { message: String, length: u64 },
    /// 500: the client is told only that; the whole chain of causes goes to the server's log.
    #[error("internal error: {}", chain(&**.0))]
    Internal(Box<dyn std::error::Error + Send + Sync>),
}

/// An error with its causes, "outer: inner: innermost", for the server's log.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        // thiserror's `#[error(transparent)]` and "{0}" messages repeat their source.
        if !text.ends_with(&more) {
            text = format!("{text}: {more}");
        }
        source = cause.source();
    }
    text
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) | ApiError::Absent(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) | ApiError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn internal(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> ApiError {
        ApiError::Internal(e.into())
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(e: crate::db::DbError) -> Self {
        ApiError::internal(e)
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        ApiError::internal(e)
    }
}

/// What a client is told to wait when the shared database is unavailable.
pub const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 5;

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::NotFound(id) => ApiError::NotFound(format!("job {id}")),
            crate::store::StoreError::Illegal(illegal) => ApiError::Conflict(illegal.to_string()),
            crate::store::StoreError::Unavailable(_) => ApiError::Busy {
                message: format!("{e}; try again shortly"),
                retry_after_secs: UNAVAILABLE_RETRY_AFTER_SECS,
            },
            e => ApiError::internal(e),
        }
    }
}

/// The job manager's refusals, as HTTP answers.
impl From<crate::jobs::JobsError> for ApiError {
    fn from(e: crate::jobs::JobsError) -> Self {
        use crate::jobs::JobsError;
        match e {
            JobsError::ShuttingDown => ApiError::Unavailable(e.to_string()),
            JobsError::OverCap {
                message,
                retry_after_secs,
            } => ApiError::TooManyRequests {
                message,
                retry_after_secs,
            },
            JobsError::Ended { .. } => ApiError::Conflict(e.to_string()),
            JobsError::Store(e) => e.into(),
            JobsError::Log(e) => ApiError::internal(e),
        }
    }
}

/// An image that cannot be added or removed, as an HTTP answer.
impl From<crate::image::ImageAdminError> for ApiError {
    fn from(e: crate::image::ImageAdminError) -> Self {
        use crate::image::ImageAdminError;
        match e {
            // One line: the client prints it as it is.
            ImageAdminError::Invalid(message) => ApiError::BadRequest(
                message
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            ImageAdminError::NotFound(what) => ApiError::NotFound(what),
            ImageAdminError::Conflict(message) => ApiError::Conflict(message),
            e @ ImageAdminError::Failed(_) => ApiError::internal(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            ApiError::Internal(e) => {
                tracing::error!(error = %chain(&**e), "request failed");
                "internal server error (see the server's log)".to_string()
            }
            other => other.to_string(),
        };
        let mut response = (
            status,
            axum::Json(ci_protocol::ErrorBody { error: message }),
        )
            .into_response();
        let headers = response.headers_mut();
        match &self {
            ApiError::Busy {
                retry_after_secs, ..
            }
            | ApiError::TooManyRequests {
                retry_after_secs, ..
            } => {
                headers.insert(
                    axum::http::header::RETRY_AFTER,
                    axum::http::HeaderValue::from(*retry_after_secs),
                );
            }
            ApiError::RangeNotSatisfiable { length, .. } => {
                if let Ok(v) = axum::http::HeaderValue::from_str(&format!("bytes */{length}")) {
                    headers.insert(axum::http::header::CONTENT_RANGE, v);
                }
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("failed to record the job")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn internal_errors_keep_their_causes_for_the_log_only() {
        let e = ApiError::internal(Outer(std::io::Error::other("disk full")));
        assert_eq!(
            e.to_string(),
            "internal error: failed to record the job: disk full"
        );
        let response = e.into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn a_transparent_wrapper_is_not_repeated() {
        let store = crate::store::StoreError::backend(std::io::Error::other("io"));
        let jobs = crate::jobs::JobsError::Store(store);
        assert_eq!(chain(&jobs), "job store: io");
    }
}
