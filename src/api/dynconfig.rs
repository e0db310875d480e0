//! PATCH /config (JSON merge-patch), PUT /config (replace) and POST /reload. A new dynamic
//! configuration is validated before it is written, and written with compare-and-set on
//! the version it was read at, so a concurrent edit is never overwritten silently.

use super::Ctx;
use super::body::{BodyRule, read_json_object};
use super::error::ApiError;
use crate::config::validate::ConfigIssue;
use crate::config::{DynamicConfig, deep_merge_patch};
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use tracing::{info, warn};

pub(super) async fn patch_config(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let patch = read_json_object(&headers, body, BodyRule::Required).await?;
    let dcs = ctx.dcs()?;
    let cluster = dcs.get_cluster().await?;
    let Some(stored) = cluster.config.as_ref().filter(|c| c.version > 0) else {
        return Err(ApiError::Unavailable(
            "the dynamic configuration is not stored in the DCS yet; nothing to patch".into(),
        ));
    };
    let mut data = stored.data.clone();
    deep_merge_patch(&mut data, &patch);
    if data != stored.data {
        refuse_new_issues(&data, Some(&stored.data))?;
        let value = Value::Object(data.clone()).to_string();
        if !dcs.set_config_value(&value, Some(stored.version)).await? {
            return Err(ApiError::Conflict(
                "the configuration was changed by someone else meanwhile; read it again and retry"
                    .into(),
            ));
        }
        info!("dynamic configuration patched through the REST API");
    }
    ctx.api.wake.notify_one();
    Ok(Json(Value::Object(data)))
}

pub(super) async fn put_config(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let data = read_json_object(&headers, body, BodyRule::Required).await?;
    refuse_new_issues(&data, None)?;
    let dcs = ctx.dcs()?;
    let cluster = dcs.get_cluster().await?;
    if cluster.config.as_ref().map(|c| &c.data) != Some(&data) {
        let value = Value::Object(data.clone()).to_string();
        if !dcs.set_config_value(&value, None).await? {
            return Err(ApiError::BadGateway(
                "the DCS refused to store the configuration".into(),
            ));
        }
        info!("dynamic configuration replaced through the REST API");
    }
    ctx.api.wake.notify_one();
    Ok(Json(Value::Object(data)))
}

/// 400 naming every problem of `new` that `old` (the stored configuration) did not already
/// have: a PATCH of one key must not be blocked by an unrelated old mistake.
fn refuse_new_issues(
    new: &Map<String, Value>,
    old: Option<&Map<String, Value>>,
) -> Result<(), ApiError> {
    let before = old.map(DynamicConfig::validate_map).unwrap_or_default();
    let fresh: Vec<ConfigIssue> = DynamicConfig::validate_map(new)
        .into_iter()
        .filter(|i| !before.contains(i))
        .collect();
    if fresh.is_empty() {
        return Ok(());
    }
    Err(ApiError::BadRequest(format!(
        "invalid configuration, nothing was changed: {}",
        describe_issues(&fresh)
    )))
}

/// Issues joined with "; ", with any value under a secret-looking path left out.
pub(super) fn describe_issues(issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(|i| {
            let p = i.path.to_ascii_lowercase();
            if ["password", "secret", "token"]
                .iter()
                .any(|s| p.contains(s))
            {
                format!("{}: invalid value", i.path)
            } else {
                i.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// POST /reload: re-read the configuration file now; the loop adopts it on its next cycle.
pub(super) async fn post_reload(State(ctx): State<Ctx>) -> Response {
    let Some(reloader) = ctx.api.reloader.clone() else {
        return ApiError::Unavailable("this node cannot reload its configuration".into())
            .into_response();
    };
    match tokio::task::spawn_blocking(move || reloader.reload()).await {
        Ok(Ok(warnings)) => {
            for w in warnings {
                warn!("reload: {w}");
            }
            (StatusCode::ACCEPTED, "reload scheduled").into_response()
        }
        Ok(Err(issues)) => {
            for i in &issues {
                warn!(
                    "reload refused: {}",
                    describe_issues(std::slice::from_ref(i))
                );
            }
            ApiError::Internal(format!(
                "reload failed, the running configuration stays: {}",
                describe_issues(&issues)
            ))
            .into_response()
        }
        Err(e) => ApiError::Internal(format!("reload failed: {e}")).into_response(),
    }
}
