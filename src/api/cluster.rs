//! Cluster-wide views from the last DCS snapshot: `/cluster` (upstream's `cluster_as_json`),
//! `/history` and `/config`.

use super::Ctx;
use super::error::ApiError;
use super::status_json::{is_quorum_mode, is_standby_cluster, sync_role_of};
use crate::config::DynamicConfig;
use crate::dcs::{Cluster, Member, MemberData, Role};
use crate::postgres::types::format_lsn;
use axum::Json;
use axum::extract::State;
use serde_json::{Map, Value, json};

pub(super) async fn get_cluster(State(ctx): State<Ctx>) -> Result<Json<Value>, ApiError> {
    let st = ctx.snapshot();
    let cluster = st.cluster.as_deref().ok_or_else(no_snapshot)?;
    let mut out = cluster_as_json(cluster, &st.dynamic);
    out.insert("scope".into(), Value::from(st.scope.clone()));
    Ok(Json(Value::Object(out)))
}

pub(super) async fn get_history(State(ctx): State<Ctx>) -> Result<Json<Value>, ApiError> {
    let st = ctx.snapshot();
    let cluster = st.cluster.as_deref().ok_or_else(no_snapshot)?;
    let lines = cluster
        .history
        .as_ref()
        .map(|h| h.lines.iter().map(|l| l.to_json()).collect())
        .unwrap_or_default();
    Ok(Json(Value::Array(lines)))
}

/// The DCS `config` key verbatim; 502 when there is none (upstream's answer).
pub(super) async fn get_config(State(ctx): State<Ctx>) -> Result<Json<Value>, ApiError> {
    let st = ctx.snapshot();
    match st.cluster.as_deref().and_then(|c| c.config.as_ref()) {
        Some(cfg) => Ok(Json(Value::Object(cfg.data.clone()))),
        None => Err(ApiError::BadGateway(
            "the dynamic configuration is not stored in the DCS".into(),
        )),
    }
}

fn no_snapshot() -> ApiError {
    ApiError::Unavailable("the cluster state has not been read from the DCS yet".into())
}

/// The topology document patronictl and monitoring read: members sorted by name with role,
/// state, addresses and replication lag against the leader's last reported position.
pub fn cluster_as_json(cluster: &Cluster, dynamic: &DynamicConfig) -> Map<String, Value> {
    let leader = cluster.leader_name();
    let cluster_lsn = cluster.status.optime.unwrap_or(0);
    let mut members: Vec<Value> = cluster
        .members
        .iter()
        .map(|m| {
            member_json(
                m,
                leader == Some(m.name.as_str()),
                cluster,
                dynamic,
                cluster_lsn,
            )
        })
        .map(Value::Object)
        .collect();
    members.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let mut out = Map::new();
    out.insert("members".into(), Value::Array(members));
    if dynamic.pause {
        out.insert("pause".into(), Value::Bool(true));
    }
    if let Some(f) = &cluster.failover
        && let Some(at) = &f.scheduled_at
    {
        let mut sw = Map::new();
        sw.insert("at".into(), Value::from(at.clone()));
        if let Some(from) = &f.leader {
            sw.insert("from".into(), Value::from(from.clone()));
        }
        if let Some(to) = &f.member {
            sw.insert("to".into(), Value::from(to.clone()));
        }
        out.insert("scheduled_switchover".into(), Value::Object(sw));
    }
    out
}

fn member_role(
    m: &Member,
    is_leader: bool,
    cluster: &Cluster,
    dynamic: &DynamicConfig,
) -> &'static str {
    if is_leader {
        if is_standby_cluster(dynamic) {
            "standby_leader"
        } else if m.data.role == Role::Promoted {
            // Holds the lock, promotion not finished yet.
            "promoted"
        } else {
            "leader"
        }
    } else if sync_role_of(cluster, dynamic, &m.name).is_some() {
        if is_quorum_mode(dynamic) {
            "quorum_standby"
        } else {
            "sync_standby"
        }
    } else {
        "replica"
    }
}

fn member_json(
    m: &Member,
    is_leader: bool,
    cluster: &Cluster,
    dynamic: &DynamicConfig,
    cluster_lsn: u64,
) -> Map<String, Value> {
    let d = &m.data;
    let role = member_role(m, is_leader, cluster, dynamic);
    let state = match &d.replication_state {
        Some(rs) if role != "leader" && !rs.is_empty() => rs.clone(),
        _ => d.state.as_str().to_string(),
    };
    let mut out = Map::new();
    out.insert("name".into(), json!(m.name));
    out.insert("role".into(), json!(role));
    out.insert("state".into(), json!(state));
    out.insert("api_url".into(), json!(d.api_url));
    let (host, port) = conn_host_port(d);
    if let Some(host) = host {
        out.insert("host".into(), json!(host));
        if let Some(port) = port {
            out.insert("port".into(), json!(port));
        }
    }
    insert_opt(&mut out, "timeline", d.timeline.map(Value::from));
    insert_opt(
        &mut out,
        "pending_restart",
        d.pending_restart.map(Value::from),
    );
    insert_opt(
        &mut out,
        "pending_restart_reason",
        d.pending_restart_reason.clone(),
    );
    insert_opt(&mut out, "scheduled_restart", d.scheduled_restart.clone());
    if !d.tags.is_empty() {
        out.insert("tags".into(), Value::Object(d.tags.clone()));
    }
    insert_opt(&mut out, "site", d.extra.get("site").cloned());
    if !is_leader {
        for (prefix, lsn) in [
            ("receive_", d.receive_lsn),
            ("replay_", d.replay_lsn),
            ("", d.xlog_location),
        ] {
            let (lsn_v, lag_v) = match lsn {
                None | Some(0) => (json!("unknown"), json!("unknown")),
                Some(lsn) => (
                    json!(format_lsn(lsn)),
                    json!(cluster_lsn.saturating_sub(lsn)),
                ),
            };
            out.insert(format!("{prefix}lsn"), lsn_v);
            out.insert(format!("{prefix}lag"), lag_v);
        }
    }
    out
}

fn insert_opt(out: &mut Map<String, Value>, key: &str, v: Option<Value>) {
    if let Some(v) = v {
        out.insert(key.into(), v);
    }
}

/// Host and port PostgreSQL listens on, from `conn_url` (or legacy `conn_kwargs`).
pub fn conn_host_port(d: &MemberData) -> (Option<String>, Option<u16>) {
    if let Some(url) = d.conn_url.as_deref() {
        return url_host_port(url);
    }
    let Some(Value::Object(kw)) = d.extra.get("conn_kwargs") else {
        return (None, None);
    };
    let host = kw
        .get("host")
        .and_then(Value::as_str)
        .filter(|h| !h.is_empty())
        .map(str::to_string);
    let port = match kw.get("port") {
        Some(Value::Number(n)) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    };
    (host, port)
}

fn url_host_port(url: &str) -> (Option<String>, Option<u16>) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, tail)) => (h, tail.strip_prefix(':')),
            None => (v6, None),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    let host = (!host.is_empty()).then(|| host.to_ascii_lowercase());
    (host, port.and_then(|p| p.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_conn_urls() {
        assert_eq!(
            url_host_port("postgres://127.0.0.1:5432/postgres"),
            (Some("127.0.0.1".into()), Some(5432))
        );
        assert_eq!(
            url_host_port("postgres://u:p@[::1]:5433/x"),
            (Some("::1".into()), Some(5433))
        );
        assert_eq!(
            url_host_port("postgres://DB1/x"),
            (Some("db1".into()), None)
        );
    }
}
