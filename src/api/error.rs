//! Errors a REST handler answers with. Upstream replies to failed requests with a bare status
//! and a short plain-text sentence (patronictl prints it verbatim), so we do the same.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// Malformed request or a value the operation cannot accept.
    #[error("{0}")]
    BadRequest(String),
    /// Missing or wrong credentials (`restapi.authentication`).
    #[error("{0}")]
    Unauthorized(String),
    /// Client address not in `restapi.allowlist`.
    #[error("{0}")]
    Forbidden(String),
    /// A body was required but the request had no Content-Length.
    #[error("{0}")]
    LengthRequired(String),
    /// The body is larger than we accept.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// Unknown path, or nothing to delete (e.g. no scheduled restart).
    #[error("{0}")]
    NotFound(String),
    /// A compare-and-set lost against a concurrent writer, or an operation already pending.
    #[error("{0}")]
    Conflict(String),
    /// The operation is impossible in the current cluster state (e.g. no switchover candidate).
    #[error("{0}")]
    PreconditionFailed(String),
    /// A scheduled time that is in the past or cannot be parsed.
    #[error("{0}")]
    Unprocessable(String),
    /// The operation failed on this node.
    #[error("{0}")]
    Internal(String),
    /// The DCS did not give us what we need (upstream answers /config this way).
    #[error("{0}")]
    BadGateway(String),
    /// The DCS or PostgreSQL is not reachable right now.
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::LengthRequired(_) => StatusCode::LENGTH_REQUIRED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl From<crate::dcs::DcsError> for ApiError {
    fn from(e: crate::dcs::DcsError) -> Self {
        ApiError::Unavailable(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut resp = (status, self.to_string()).into_response();
        if status == StatusCode::UNAUTHORIZED {
            // Lets curl and browsers prompt for the restapi credentials, as upstream does.
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"Patroni\""),
            );
        }
        resp
    }
}
