//! Kubernetes-style probes: `/liveness` (is the HA loop still cycling?) and `/readiness` (can
//! this node take traffic?). Both answer with a bare status code, never a body.

use super::Ctx;
use super::health::{RawQuery, query_params};
use super::query::QueryParams;
use super::status_json::{PatroniStatus, patroni_status};
use crate::dcs::{PgState, Role};
use crate::status::NodeStatus;
use axum::extract::State;
use axum::http::StatusCode;

pub(super) async fn liveness(State(ctx): State<Ctx>) -> StatusCode {
    let st = ctx.snapshot();
    ok_or_503(is_alive(&st, ctx.started_at, super::now()))
}

pub(super) async fn readiness(State(ctx): State<Ctx>, query: RawQuery) -> StatusCode {
    let st = ctx.snapshot();
    let report = patroni_status(&st);
    match readiness_failure(&st, &report, &query_params(query)) {
        None => StatusCode::OK,
        Some(reason) => {
            tracing::debug!("Readiness check failure: {reason}");
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

fn ok_or_503(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// Alive while paused, or while the next cycle is due less than `ttl` ago on a running
/// primary (`2*ttl` elsewhere: a replica can tolerate a slow loop longer). Before the first
/// cycle the API start time stands in for the last cycle.
pub fn is_alive(st: &NodeStatus, started_at: i64, now: i64) -> bool {
    if st.is_paused() {
        return true;
    }
    let ttl = st.dynamic.ttl as i64;
    let primary = st.role == Role::Primary && st.state == PgState::Running;
    let threshold = if primary { ttl } else { 2 * ttl };
    let next_run = st.last_cycle_at.unwrap_or(started_at) + st.dynamic.loop_wait as i64;
    next_run + threshold > now
}

/// `None` when ready; otherwise why not (logged at debug level, as upstream does).
pub fn readiness_failure(st: &NodeStatus, r: &PatroniStatus, q: &QueryParams) -> Option<String> {
    if st.has_lock {
        // We only take the lock after bootstrap or once up as a standby.
        return None;
    }
    if st.state != PgState::Running {
        return Some("PostgreSQL is not running".into());
    }
    if r.replication_state.as_deref() != Some("streaming") {
        return Some("PostgreSQL replication state is not streaming".into());
    }
    let Some(cluster) = st.cluster.as_deref() else {
        return Some("DCS is not accessible".into());
    };
    let leader_optime = cluster.status.optime.unwrap_or(0) as i128;
    let write_mode = q.get("mode") == Some("write");
    let location = if write_mode {
        r.received_location()
    } else {
        r.replayed_location()
    };
    let lag = leader_optime - location as i128;
    let max_lag = q
        .bytes("lag")
        .unwrap_or(st.dynamic.maximum_lag_on_failover as i128);
    (lag > max_lag).then(|| {
        let mode = if write_mode { "write" } else { "apply" };
        format!("Replication {mode} lag {lag} exceeds maximum allowable {max_lag}")
    })
}
