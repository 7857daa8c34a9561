//! Every error a client can see, as an RFC 9457 `application/problem+json`
//! response with the status that tells the client what to do next.

use std::time::Duration;

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

use crate::auth::AuthError;
use crate::auth::policy::Denied;

/// Why a request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("no route matches {0}")]
    NotFound(String),
    #[error("request {0} is unknown or its reply has expired")]
    UnknownRequest(String),
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("the body exceeds the route's limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error(
        "the record is larger than the Kafka cluster accepts (its message.max.bytes), though within the route's limit"
    )]
    RecordTooLarge,
    #[error("the body could not be read: {0}")]
    BodyUnreadable(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{reason}")]
    Unavailable {
        reason: String,
        retry_after: Duration,
    },
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// A rate limit: 429 with `Retry-After` (the `RateLimit-*` headers are
    /// added by [`crate::limits::rate`]).
    #[error("{reason}")]
    TooManyRequests {
        reason: String,
        retry_after: Duration,
    },
    /// The same `Idempotency-Key` is still being served: 409.
    #[error("{0}")]
    Conflict(String),
    /// The same `Idempotency-Key` with another request: 422.
    #[error("{0}")]
    Unprocessable(String),
    /// No valid credential: 401 with `WWW-Authenticate: Bearer`.
    #[error(transparent)]
    Unauthorized(AuthError),
    /// A valid credential that is not allowed here: 403.
    #[error("{reason}")]
    Forbidden { reason: String, scopes: Vec<String> },
}

impl From<Denied> for Problem {
    fn from(denied: Denied) -> Self {
        match denied {
            Denied::Unauthenticated(error) => Problem::Unauthorized(error),
            Denied::Forbidden { reason, scopes } => Problem::Forbidden { reason, scopes },
        }
    }
}

impl From<axum::extract::rejection::PathRejection> for Problem {
    fn from(rejection: axum::extract::rejection::PathRejection) -> Self {
        Problem::BadRequest(format!("the path: {}", rejection.body_text()))
    }
}

impl From<axum::extract::rejection::QueryRejection> for Problem {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> Self {
        Problem::BadRequest(format!("the query string: {}", rejection.body_text()))
    }
}

/// The JSON body of a problem response.
#[derive(Serialize)]
struct ProblemBody<'a> {
    r#type: &'a str,
    title: &'a str,
    status: u16,
    detail: String,
}

impl Problem {
    fn status(&self) -> StatusCode {
        match self {
            Problem::NotFound(_) | Problem::UnknownRequest(_) => StatusCode::NOT_FOUND,
            Problem::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Problem::BodyTooLarge { .. } | Problem::RecordTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Problem::BodyUnreadable(_) | Problem::BadRequest(_) => StatusCode::BAD_REQUEST,
            Problem::Unavailable { .. } | Problem::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Problem::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Problem::Forbidden { .. } => StatusCode::FORBIDDEN,
            Problem::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Problem::Conflict(_) => StatusCode::CONFLICT,
            Problem::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    /// The `WWW-Authenticate` challenge of a 401 or 403 (RFC 6750 §3): no
    /// error code when no credential came, `invalid_token` for a bad one,
    /// `insufficient_scope` with the scopes that are missing.
    fn challenge(&self) -> Option<String> {
        const REALM: &str = "Bearer realm=\"osmosis\"";
        match self {
            Problem::Unauthorized(AuthError::Missing) => Some(REALM.to_owned()),
            Problem::Unauthorized(error) => Some(format!(
                "{REALM}, error=\"invalid_token\", error_description=\"{}\"",
                error.to_string().replace(['"', '\\'], "'")
            )),
            Problem::Forbidden { scopes, .. } if !scopes.is_empty() => Some(format!(
                "{REALM}, error=\"insufficient_scope\", scope=\"{}\"",
                scopes.join(" ")
            )),
            Problem::Forbidden { .. } => Some(format!("{REALM}, error=\"insufficient_scope\"")),
            _ => None,
        }
    }

    /// Seconds a client should wait before retrying, for 503s and 429s.
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Problem::Unavailable { retry_after, .. }
            | Problem::TooManyRequests { retry_after, .. } => Some(*retry_after),
            Problem::ShuttingDown => Some(Duration::from_secs(1)),
            _ => None,
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = ProblemBody {
            r#type: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: self.to_string(),
        };
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if matches!(self, Problem::BodyTooLarge { .. }) {
            // The rest of the upload was not read: the connection cannot
            // carry another request, and the client must know not to reuse it.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(challenge) = self
            .challenge()
            .and_then(|c| HeaderValue::from_str(&c).ok())
        {
            headers.insert(header::WWW_AUTHENTICATE, challenge);
        }
        if let Some(wait) = self.retry_after() {
            let secs = (wait.as_millis().div_ceil(1000) as u64).max(1);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
