//! POST /restart, DELETE /restart, POST /reinitialize: check what can be checked from the
//! published status, then hand a `NodeCommand` to the HA loop (which alone drives
//! PostgreSQL) and answer with its reply.

use super::Ctx;
use super::body::{BodyRule, opt_bool, read_json_object, reject_unknown};
use super::error::ApiError;
use super::schedule::parse_schedule;
use crate::command::{CommandReply, NodeCommand, ReinitRequest, RestartRequest};
use crate::status::NodeStatus;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use std::time::Duration;
use tokio::sync::oneshot;

/// How long we wait for room in the command queue before calling the loop busy.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Replies to everything but an immediate restart come within one loop cycle or two.
const QUICK_REPLY: Duration = Duration::from_secs(120);
/// An immediate restart answers once PostgreSQL is back (upstream's default start timeout
/// is 300 s); past this we stop waiting, the restart itself goes on.
const RESTART_REPLY: Duration = Duration::from_secs(600);

pub(super) async fn post_restart(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let map = read_json_object(&headers, body, BodyRule::Optional).await?;
    let st = ctx.snapshot();
    if st.is_paused() && map.contains_key("schedule") {
        return Err(ApiError::Internal(
            "Can't schedule restart in the paused state".into(),
        ));
    }
    let req = parse_restart(&map)?;
    if req.schedule.is_none() && !restart_matches(&req, &st) {
        return Ok(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "restart conditions are not satisfied",
        ));
    }
    let wait = match req.timeout {
        Some(t) => t + QUICK_REPLY,
        None => RESTART_REPLY,
    };
    send(&ctx, wait, |tx| NodeCommand::Restart(req, tx)).await
}

pub(super) async fn delete_restart(State(ctx): State<Ctx>) -> Result<Response, ApiError> {
    send(&ctx, QUICK_REPLY, NodeCommand::CancelScheduledRestart).await
}

pub(super) async fn post_reinitialize(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let map = read_json_object(&headers, body, BodyRule::Optional).await?;
    reject_unknown(&map, &["force", "from_leader", "from-leader"])?;
    let req = ReinitRequest {
        force: opt_bool(&map, "force")?,
        from_leader: opt_bool(&map, "from_leader")? || opt_bool(&map, "from-leader")?,
    };
    let st = ctx.snapshot();
    if let Some(refusal) = reinit_refusal(&st) {
        return Ok(text(StatusCode::SERVICE_UNAVAILABLE, refusal));
    }
    send(&ctx, QUICK_REPLY, |tx| NodeCommand::Reinitialize(req, tx)).await
}

/// Upstream's own checks before it even asks the loop.
fn reinit_refusal(st: &NodeStatus) -> Option<&'static str> {
    let cluster = st.cluster.as_deref()?;
    match cluster.leader_name() {
        None => Some("Cluster has no leader, can not reinitialize"),
        Some(l) if l == st.name || st.has_lock => Some("I am the leader, can not reinitialize"),
        Some(_) => None,
    }
}

fn text(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, msg.into()).into_response()
}

/// Send a command and turn the loop's reply into a response.
async fn send(
    ctx: &Ctx,
    wait: Duration,
    make: impl FnOnce(oneshot::Sender<CommandReply>) -> NodeCommand,
) -> Result<Response, ApiError> {
    let Some(commands) = ctx.api.commands.as_ref() else {
        return Err(ApiError::Unavailable(
            "this node does not accept restart/reinitialize commands (no HA loop attached)".into(),
        ));
    };
    let (tx, rx) = oneshot::channel();
    match tokio::time::timeout(SEND_TIMEOUT, commands.send(make(tx))).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => {
            return Err(ApiError::Unavailable("the HA loop is not running".into()));
        }
        Err(_) => {
            return Err(ApiError::Unavailable(
                "the HA loop is busy and did not take the request".into(),
            ));
        }
    }
    ctx.api.wake.notify_one();
    let reply = match tokio::time::timeout(wait, rx).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(_)) => {
            return Err(ApiError::Unavailable(
                "the HA loop dropped the request without answering".into(),
            ));
        }
        Err(_) => {
            return Err(ApiError::Unavailable(format!(
                "the HA loop did not answer within {} s",
                wait.as_secs()
            )));
        }
    };
    Ok(match reply {
        CommandReply::Done(m) => text(StatusCode::OK, m),
        CommandReply::Accepted(m) => text(StatusCode::ACCEPTED, m),
        CommandReply::Refused { status, message } => text(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            message,
        ),
    })
}

/// Validate the restart filters with upstream's messages.
fn parse_restart(map: &Map<String, Value>) -> Result<RestartRequest, ApiError> {
    let mut req = RestartRequest::default();
    for (k, v) in map {
        match k.as_str() {
            "schedule" => {
                let s = v.as_str().unwrap_or_default();
                req.schedule = Some(parse_schedule(s, "restart", chrono::Utc::now().into())?);
            }
            "role" => req.role = Some(parse_role(v)?),
            "postgres_version" => {
                let s = v
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string());
                postgres_version_to_int(&s).map_err(ApiError::BadRequest)?;
                req.postgres_version = Some(s);
            }
            "timeout" => req.timeout = Some(parse_timeout(v)?),
            "restart_pending" => req.restart_pending = opt_bool(map, k)?,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "Unknown filter for the scheduled restart: {other}"
                )));
            }
        }
    }
    Ok(req)
}

fn parse_role(v: &Value) -> Result<String, ApiError> {
    match v.as_str() {
        Some("primary" | "master") => Ok("primary".into()),
        Some(r @ ("standby_leader" | "replica")) => Ok(r.into()),
        _ => Err(ApiError::BadRequest(
            "PostgreSQL role should be either primary, standby_leader, or replica".into(),
        )),
    }
}

/// A number of seconds, or a string with a unit (`30s`, `5min`, `1h`, `1d`, `1500ms`).
fn parse_timeout(v: &Value) -> Result<Duration, ApiError> {
    let bad = || ApiError::BadRequest("Timeout should be a positive number of seconds".into());
    let secs = match v {
        Value::Number(n) => n.as_f64().ok_or_else(bad)?,
        Value::String(s) => {
            let s = s.trim();
            let split = s
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(s.len());
            let n: f64 = s[..split].parse().map_err(|_| bad())?;
            let factor = match s[split..].trim() {
                "" | "s" => 1.0,
                "ms" => 0.001,
                "min" => 60.0,
                "h" => 3600.0,
                "d" => 86400.0,
                _ => return Err(bad()),
            };
            n * factor
        }
        _ => return Err(bad()),
    };
    let secs = secs.round();
    if !secs.is_finite() || secs <= 0.0 || secs > 1e9 {
        return Err(bad());
    }
    Ok(Duration::from_secs(secs as u64))
}

/// `9.6.3` -> 90603, `15.2` -> 150002, with upstream's messages for anything else.
pub fn postgres_version_to_int(v: &str) -> Result<u32, String> {
    let parts: Vec<u32> = v
        .split('.')
        .map(|p| p.trim().parse::<u32>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("Invalid PostgreSQL version: {v}"))?;
    let format_err = || format!("Invalid PostgreSQL version format: X.Y or X.Y.Z is accepted: {v}");
    match parts.as_slice() {
        [major, minor] if *major >= 10 && *minor < 100 => Ok(major * 10000 + minor),
        [major, mid, minor] if *major < 10 && *mid < 100 && *minor < 100 => {
            Ok(major * 10000 + mid * 100 + minor)
        }
        _ => Err(format_err()),
    }
}

/// Upstream's `restart_matches` on the published status.
fn restart_matches(req: &RestartRequest, st: &NodeStatus) -> bool {
    if let Some(role) = &req.role
        && role != st.role.as_str()
    {
        return false;
    }
    if let Some(v) = &req.postgres_version {
        let running = st.pg.as_ref().map_or(0, |p| p.server_version);
        if postgres_version_to_int(v).is_ok_and(|want| want <= running) {
            return false;
        }
    }
    !(req.restart_pending && !st.pending_restart && st.pending_restart_reason.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_like_upstream() {
        assert_eq!(postgres_version_to_int("9.5.3"), Ok(90503));
        assert_eq!(postgres_version_to_int("10.1"), Ok(100001));
        assert_eq!(postgres_version_to_int("15.4"), Ok(150004));
        assert!(
            postgres_version_to_int("10")
                .unwrap_err()
                .contains("X.Y or X.Y.Z")
        );
        assert!(
            postgres_version_to_int("9.6")
                .unwrap_err()
                .contains("X.Y or X.Y.Z")
        );
        assert_eq!(
            postgres_version_to_int("a.b.c"),
            Err("Invalid PostgreSQL version: a.b.c".into())
        );
    }

    #[test]
    fn timeouts() {
        assert_eq!(
            parse_timeout(&Value::from(30)).unwrap(),
            Duration::from_secs(30)
        );
        assert_eq!(
            parse_timeout(&Value::from("2min")).unwrap(),
            Duration::from_secs(120)
        );
        assert!(parse_timeout(&Value::from(0)).is_err());
        assert!(parse_timeout(&Value::from(-5)).is_err());
        assert!(parse_timeout(&Value::from("soon")).is_err());
        assert!(parse_timeout(&Value::Bool(true)).is_err());
    }
}
