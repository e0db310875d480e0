//! GET /failsafe (the `failsafe` key) and POST /failsafe (a primary without the DCS asks
//! whether it may continue): answered at once from the published status, so a replica
//! whose own DCS calls hang still answers within the primary's 2 s budget.

use super::Ctx;
use super::body::{BodyRule, read_json_object};
use super::error::ApiError;
use crate::command::NodeCommand;
use crate::dcs::{PgState, Role};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

/// The `failsafe` key (member name -> api_url) as last read; 502 when there is none, as
/// upstream answers when failsafe mode is off.
pub(super) async fn get_failsafe(State(ctx): State<Ctx>) -> Response {
    let st = ctx.snapshot();
    match st.cluster.as_deref().and_then(|c| c.failsafe.as_ref()) {
        Some(f) if st.dynamic.failsafe_mode => axum::Json(f.clone()).into_response(),
        _ => ApiError::BadGateway("failsafe mode is not active".into()).into_response(),
    }
}

/// Upstream: 502 when failsafe mode is off; 500 "Running as a leader" when this node itself
/// runs as a primary; otherwise 200 "Accepted" with our received/replayed LSN in the `lsn`
/// header, and the HA loop learns that the primary is alive.
pub(super) async fn post_failsafe(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let st = ctx.snapshot();
    if !st.dynamic.failsafe_mode {
        return Err(ApiError::BadGateway("failsafe mode is not enabled".into()));
    }
    let req = read_json_object(&headers, body, BodyRule::Required).await?;
    let Some(leader) = req.get("name").and_then(|n| n.as_str()) else {
        return Err(ApiError::BadRequest(
            "the request needs the sender's \"name\"".into(),
        ));
    };
    let running_primary = st.role == Role::Primary
        && st.state == PgState::Running
        && st.pg.as_ref().is_some_and(|p| !p.in_recovery);
    if running_primary {
        return Ok((StatusCode::INTERNAL_SERVER_ERROR, "Running as a leader").into_response());
    }
    let contact = NodeCommand::FailsafeContact {
        leader: leader.to_string(),
        at: std::time::Instant::now(),
    };
    let noted = ctx
        .api
        .commands
        .as_ref()
        .is_some_and(|c| c.try_send(contact).is_ok());
    if !noted {
        return Ok((
            StatusCode::SERVICE_UNAVAILABLE,
            "the HA loop cannot take the failsafe contact now",
        )
            .into_response());
    }
    let mut resp = (StatusCode::OK, "Accepted").into_response();
    if let Some(lsn) = st.pg.as_ref().map(|p| p.wal_lsn)
        && let Ok(v) = lsn.to_string().parse()
    {
        resp.headers_mut().insert("lsn", v);
    }
    Ok(resp)
}
