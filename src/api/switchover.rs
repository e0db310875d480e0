//! POST /switchover, POST /failover, DELETE /switchover: validate as upstream does, write the
//! `failover` key, wake the HA loop, and for an immediate request wait for the leader key to
//! move (the HA loops do the actual work).

use super::Ctx;
use super::body::{BodyRule, opt_string, read_json_object, reject_unknown};
use super::candidates::{Action, candidate_members, check_candidates};
use super::error::ApiError;
use super::schedule::{isoformat, parse_schedule};
use crate::dcs::{Cluster, Dcs, Failover};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

const KNOWN: &[&str] = &["leader", "candidate", "member", "scheduled_at"];

/// How often the result of an immediate switchover is polled from the DCS.
const POLL_EVERY: Duration = Duration::from_millis(500);

pub(super) async fn post_switchover(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(ctx, headers, body, Action::Switchover).await
}

pub(super) async fn post_failover(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(ctx, headers, body, Action::Failover).await
}

async fn handle(ctx: Ctx, headers: HeaderMap, body: Body, action: Action) -> Response {
    match run(ctx, headers, body, action).await {
        Ok((code, text)) => (code, text).into_response(),
        Err(e) => e.into_response(),
    }
}

/// What the caller asked for, after type checks.
struct Request {
    leader: Option<String>,
    candidate: Option<String>,
    scheduled_at: Option<String>,
}

fn parse_request(map: &Map<String, Value>) -> Result<Request, ApiError> {
    reject_unknown(map, KNOWN)?;
    let candidate = match opt_string(map, "candidate")? {
        Some(c) => Some(c),
        None => opt_string(map, "member")?,
    };
    Ok(Request {
        leader: opt_string(map, "leader")?,
        candidate,
        scheduled_at: opt_string(map, "scheduled_at")?,
    })
}

fn dcs_of(ctx: &Ctx) -> Result<Arc<dyn Dcs>, ApiError> {
    ctx.api
        .dcs
        .clone()
        .ok_or_else(|| ApiError::Unavailable("this node has no DCS connection".into()))
}

async fn run(
    ctx: Ctx,
    headers: HeaderMap,
    body: Body,
    mut action: Action,
) -> Result<(StatusCode, String), ApiError> {
    let map = read_json_object(&headers, body, BodyRule::Required).await?;
    let req = parse_request(&map)?;
    let dcs = dcs_of(&ctx)?;
    let cluster = dcs.get_cluster().await?;
    let dynamic = crate::config::DynamicConfig::from_map(
        &cluster
            .config
            .as_ref()
            .map(|c| c.data.clone())
            .unwrap_or_default(),
    )
    .0;
    info!(
        "received {} request with leader={:?} candidate={:?} scheduled_at={:?}",
        action.as_str(),
        req.leader,
        req.candidate,
        req.scheduled_at
    );
    let bad = |m: &str| Err(ApiError::BadRequest(m.to_string()));
    if action == Action::Failover && req.candidate.is_none() {
        return bad("Failover could be performed only to a specific candidate");
    }
    if action == Action::Switchover && req.leader.is_none() {
        return bad("Switchover could be performed only from a specific leader");
    }
    let mut scheduled = None;
    if let Some(at) = &req.scheduled_at {
        if action == Action::Failover {
            return bad("Failover can't be scheduled");
        }
        if dynamic.pause {
            return bad("Can't schedule switchover in the paused state");
        }
        scheduled = Some(parse_schedule(
            at,
            action.as_str(),
            chrono::Utc::now().into(),
        )?);
    }
    if dynamic.pause && req.candidate.is_none() {
        return bad("Switchover is possible only to a specific candidate in a paused state");
    }
    if action == Action::Failover && req.leader.is_some() {
        warn!("received failover request with leader specified - performing switchover instead");
        action = Action::Switchover;
    }
    if req.leader.is_some() && req.leader == req.candidate {
        return bad("Switchover target and source are the same");
    }
    if scheduled.is_none() {
        let members = candidate_members(
            &cluster,
            &dynamic,
            req.leader.as_deref(),
            req.candidate.as_deref(),
            action,
        )
        .map_err(ApiError::PreconditionFailed)?;
        if let Some(why) = check_candidates(&members, action).await {
            return Err(ApiError::PreconditionFailed(why));
        }
    }
    let value = failover_value(&req, scheduled.as_ref().map(isoformat));
    if !dcs.set_failover_value(&value, None).await.unwrap_or(false) {
        return Ok((
            StatusCode::SERVICE_UNAVAILABLE,
            "failed to write failover key into DCS".into(),
        ));
    }
    ctx.api.wake.notify_one();
    if scheduled.is_some() {
        return Ok((
            StatusCode::ACCEPTED,
            format!("{} scheduled", action.title()),
        ));
    }
    let deadline = Duration::from_secs(2 * dynamic.loop_wait.max(10));
    Ok(poll_result(
        dcs.as_ref(),
        &cluster,
        req.candidate.as_deref(),
        action,
        deadline,
    )
    .await)
}

/// The compact JSON upstream writes: only the fields that are set.
fn failover_value(req: &Request, scheduled_at: Option<String>) -> String {
    let f = Failover {
        leader: req.leader.clone(),
        member: req.candidate.clone(),
        scheduled_at,
        version: 0,
    };
    serde_json::to_string(&f).unwrap_or_else(|_| "{}".into())
}

fn is_pending(f: Option<&Failover>) -> bool {
    f.is_some_and(|f| f.leader.is_some() || f.member.is_some())
}

/// Wait until the leader key names somebody other than the old leader (200) or the failover
/// key is consumed without that happening (503 "... failed"), at most `deadline`.
async fn poll_result(
    dcs: &dyn Dcs,
    before: &Cluster,
    candidate: Option<&str>,
    action: Action,
    deadline: Duration,
) -> (StatusCode, String) {
    let old_leader = before.leader_name();
    let (verb, title) = match action {
        Action::Switchover => ("switched", "Switched"),
        Action::Failover => ("failed", "Failed"),
    };
    let until = tokio::time::Instant::now() + deadline;
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(POLL_EVERY).await;
        let cluster = match dcs.get_cluster().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(
                    "Exception occurred during polling {} result: {e}",
                    action.as_str()
                );
                continue;
            }
        };
        if let Some(now) = cluster.leader_name()
            && Some(now) != old_leader
        {
            return match candidate {
                Some(c) if c != now => (
                    StatusCode::OK,
                    format!("{title} over to \"{now}\" instead of \"{c}\""),
                ),
                _ => (
                    StatusCode::OK,
                    format!("Successfully {verb} over to \"{now}\""),
                ),
            };
        }
        if !is_pending(cluster.failover.as_ref()) {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{} failed", action.title()),
            );
        }
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("{} status unknown", action.title()),
    )
}

/// DELETE /switchover: clear a scheduled switchover (compare-and-set on its version).
pub(super) async fn delete_switchover(State(ctx): State<Ctx>) -> Result<Response, ApiError> {
    let dcs = dcs_of(&ctx)?;
    let cluster = dcs.get_cluster().await?;
    let Some(f) = cluster.failover.filter(|f| f.scheduled_at.is_some()) else {
        return Ok((StatusCode::NOT_FOUND, "no switchover is scheduled").into_response());
    };
    if !dcs.set_failover_value("{}", Some(f.version)).await? {
        return Err(ApiError::Conflict(
            "the scheduled switchover changed meanwhile; nothing was deleted".into(),
        ));
    }
    ctx.api.wake.notify_one();
    Ok((StatusCode::OK, "scheduled switchover deleted").into_response())
}
