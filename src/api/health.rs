//! Load-balancer health checks (`/primary`, `/replica`, `/read-only`, ...): 200 or 503, with the
//! status document on GET and nothing but the status line on HEAD/OPTIONS (HAProxy's
//! `option httpchk OPTIONS /primary`).

use super::Ctx;
use super::query::QueryParams;
use super::status_json::{PatroniStatus, is_standby_cluster, patroni_status};
use crate::dcs::{Role, tag_is_true};
use crate::status::NodeStatus;
use axum::Json;
use axum::extract::{Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthCheck {
    Primary,
    StandbyLeader,
    Leader,
    Replica,
    ReadOnly,
    Health,
    Synchronous,
    Asynchronous,
    Quorum,
    ReadOnlySync,
    ReadOnlyQuorum,
}

/// Every path upstream documents for health checks, and what it checks.
pub const HEALTH_PATHS: &[(&str, HealthCheck)] = &[
    ("/", HealthCheck::Primary),
    ("/primary", HealthCheck::Primary),
    ("/master", HealthCheck::Primary),
    ("/read-write", HealthCheck::Primary),
    ("/standby-leader", HealthCheck::StandbyLeader),
    ("/standby_leader", HealthCheck::StandbyLeader),
    ("/leader", HealthCheck::Leader),
    ("/replica", HealthCheck::Replica),
    ("/read-only", HealthCheck::ReadOnly),
    ("/health", HealthCheck::Health),
    ("/sync", HealthCheck::Synchronous),
    ("/synchronous", HealthCheck::Synchronous),
    ("/async", HealthCheck::Asynchronous),
    ("/asynchronous", HealthCheck::Asynchronous),
    ("/quorum", HealthCheck::Quorum),
    ("/read-only-sync", HealthCheck::ReadOnlySync),
    ("/read-only-synchronous", HealthCheck::ReadOnlySync),
    ("/read-only-quorum", HealthCheck::ReadOnlyQuorum),
];

impl HealthCheck {
    pub fn from_path(path: &str) -> Option<HealthCheck> {
        HEALTH_PATHS
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, c)| *c)
    }

    /// Upstream answers every GET it has no handler for with a health check chosen by
    /// substrings of the path (`/replica/extra` is a replica check, `/foo` always 503):
    /// `None` is the "always 503" case.
    pub fn classify(path: &str) -> Option<HealthCheck> {
        if let Some(c) = HealthCheck::from_path(path) {
            return Some(c);
        }
        let has = |s: &str| path.contains(s);
        if has("standby_leader") || has("standby-leader") {
            Some(HealthCheck::StandbyLeader)
        } else if has("leader") {
            Some(HealthCheck::Leader)
        } else if has("master") || has("primary") || has("read-write") {
            Some(HealthCheck::Primary)
        } else if has("replica") {
            Some(HealthCheck::Replica)
        } else if has("read-only") && !has("sync") && !has("quorum") {
            Some(HealthCheck::ReadOnly)
        } else if has("health") {
            Some(HealthCheck::Health)
        } else {
            None
        }
    }
}

pub(super) type RawQuery =
    Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>;

pub(super) fn query_params(q: RawQuery) -> QueryParams {
    // A query string we cannot decode counts as no parameters, as upstream's parse_qs does.
    q.map(|Query(pairs)| QueryParams::from_pairs(pairs))
        .unwrap_or_default()
}

pub(super) async fn health_handler(
    State(ctx): State<Ctx>,
    method: Method,
    uri: Uri,
    query: RawQuery,
) -> Response {
    let st = ctx.snapshot();
    let report = patroni_status(&st);
    let code = match HealthCheck::classify(uri.path()) {
        Some(check) => check_status(check, &st, &report, &query_params(query)),
        None => StatusCode::SERVICE_UNAVAILABLE,
    };
    if method == Method::GET {
        (code, Json(report)).into_response()
    } else {
        code.into_response()
    }
}

/// Which role-based checks pass, computed once per request as upstream does.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct RoleCodes {
    leader: bool,
    primary: bool,
    standby_leader: bool,
    replica: bool,
}

fn role_codes(st: &NodeStatus, r: &PatroniStatus, q: &QueryParams) -> RoleCodes {
    let mut codes = RoleCodes {
        replica: replica_ok(st, r, q),
        ..RoleCodes::default()
    };
    if st.cluster.is_none() && r.pause {
        // No DCS view while paused: go by what PostgreSQL itself says.
        codes.leader = matches!(r.role, Role::Primary | Role::StandbyLeader);
        codes.primary = r.role == Role::Primary;
        codes.standby_leader = r.role == Role::StandbyLeader;
    } else if st.has_lock {
        codes.leader = true;
        if is_standby_cluster(&st.dynamic) {
            codes.primary = false;
            codes.replica = false;
            codes.standby_leader = matches!(r.role, Role::Replica | Role::StandbyLeader);
        } else {
            // The loop publishes a non-primary role before it demotes, so the lock alone
            // does not make us a writable primary.
            codes.primary = r.role == Role::Primary;
        }
    }
    codes
}

fn replica_ok(st: &NodeStatus, r: &PatroniStatus, q: &QueryParams) -> bool {
    let leader_optime = st
        .cluster
        .as_ref()
        .and_then(|c| c.status.optime)
        .unwrap_or(0) as i128;
    let max_lag = q.bytes("lag").unwrap_or(i128::MAX);
    let lagging = leader_optime > 0
        && leader_optime > (r.replayed_location() as i128).saturating_add(max_lag);
    let state_matches = q
        .get("replication_state")
        .is_none_or(|want| r.replication_state.as_deref() == Some(want));
    !tag_is_true(st.tags.get("noloadbalance"))
        && !lagging
        && r.role == Role::Replica
        && r.is_running()
        && state_matches
}

/// The HTTP status of one health check.
pub fn check_status(
    check: HealthCheck,
    st: &NodeStatus,
    r: &PatroniStatus,
    q: &QueryParams,
) -> StatusCode {
    let c = role_codes(st, r, q);
    let leaderish = c.primary || c.standby_leader;
    let have_cluster = st.cluster.is_some();
    let (sync, quorum) = (r.sync_standby, r.quorum_standby);
    let (ok, ignore_tags) = match check {
        HealthCheck::StandbyLeader => (c.standby_leader, true),
        HealthCheck::Leader => (c.leader, true),
        HealthCheck::Primary => (c.primary, true),
        HealthCheck::Replica => (c.replica, false),
        HealthCheck::ReadOnly => (leaderish || c.replica, false),
        HealthCheck::Health => (r.is_running(), false),
        HealthCheck::Synchronous => (have_cluster && sync && c.replica, false),
        HealthCheck::Quorum => (have_cluster && quorum && c.replica, false),
        HealthCheck::Asynchronous => (have_cluster && !sync && !quorum && c.replica, false),
        HealthCheck::ReadOnlySync => (have_cluster && (leaderish || sync && c.replica), false),
        HealthCheck::ReadOnlyQuorum => (have_cluster && (leaderish || quorum && c.replica), false),
    };
    let ok = ok && (ignore_tags || tags_match(&st.tags, q));
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// `tag_<k>=<v>`: every requested tag must be set on this node with that exact value
/// (non-string tag values compare by their lower-cased text, e.g. `true`).
fn tags_match(tags: &Map<String, Value>, q: &QueryParams) -> bool {
    q.tag_filters().all(|(k, want)| match tags.get(k) {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => s == want,
        Some(other) => other.to_string().to_lowercase() == want,
    })
}
