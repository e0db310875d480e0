//! Request bodies of the write endpoints: a JSON object of at most `MAX_BODY` bytes. Every
//! way a body can be wrong is a 4xx with a sentence saying what was wrong, never a panic.

use super::error::ApiError;
use axum::body::Body;
use axum::http::{HeaderMap, header};
use serde_json::{Map, Value};

/// Upstream has no limit; 1 MiB is far above any real request (a full dynamic config is a
/// few kB) and keeps a hostile client from making us buffer gigabytes.
pub const MAX_BODY: usize = 1 << 20;

/// Whether an empty body is acceptable (POST /restart, /reinitialize) or not (PATCH /config,
/// POST /switchover).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyRule {
    Required,
    Optional,
}

/// Read the body as a JSON object. With `Optional`, an absent or empty body is `{}`.
pub async fn read_json_object(
    headers: &HeaderMap,
    body: Body,
    rule: BodyRule,
) -> Result<Map<String, Value>, ApiError> {
    let declared = headers.get(header::CONTENT_LENGTH).is_some();
    let chunked = headers.get(header::TRANSFER_ENCODING).is_some();
    if rule == BodyRule::Required && !declared && !chunked {
        return Err(ApiError::LengthRequired(
            "a JSON request body with a Content-Length header is required".into(),
        ));
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError::PayloadTooLarge(format!(
            "the request body is larger than {MAX_BODY} bytes or could not be read"
        ))
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return match rule {
            BodyRule::Optional => Ok(Map::new()),
            BodyRule::Required => Err(ApiError::BadRequest(
                "the request body is empty; a JSON object is required".into(),
            )),
        };
    }
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("the request body is not valid JSON: {e}")))?;
    match value {
        Value::Object(map) if map.is_empty() && rule == BodyRule::Required => Err(
            ApiError::BadRequest("the request body is an empty JSON object".into()),
        ),
        Value::Object(map) => Ok(map),
        other => Err(ApiError::BadRequest(format!(
            "the request body must be a JSON object, not {}",
            crate::config::validate::describe_value(&other)
        ))),
    }
}

/// Refuse members this endpoint does not know (a typo would otherwise be silently ignored).
pub fn reject_unknown(map: &Map<String, Value>, known: &[&str]) -> Result<(), ApiError> {
    match map.keys().find(|k| !known.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) => Err(ApiError::BadRequest(format!(
            "unknown member {k:?} in the request body (expected: {})",
            known.join(", ")
        ))),
    }
}

/// An optional string member; `null` counts as absent, an empty string too (as upstream).
pub fn opt_string(map: &Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ApiError::BadRequest(format!(
            "{key} must be a string, not {}",
            crate::config::validate::describe_value(other)
        ))),
    }
}

/// An optional boolean with upstream's `parse_bool` spellings ("on", "yes", 1...).
pub fn opt_bool(map: &Map<String, Value>, key: &str) -> Result<bool, ApiError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(v) => crate::config::pg_params::parse_bool(v).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{key} must be a boolean, not {}",
                crate::config::validate::describe_value(v)
            ))
        }),
    }
}
