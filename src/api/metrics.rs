//! `/metrics`: the node status in Prometheus text format, with upstream's metric names.

use super::Ctx;
use super::status_json::{PatroniStatus, Xlog, patroni_status};
use crate::dcs::{PgState, Role};
use crate::status::NodeStatus;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use std::fmt::Write;

pub(super) async fn get_metrics(State(ctx): State<Ctx>) -> impl IntoResponse {
    let st = ctx.snapshot();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render(&st),
    )
}

/// Upstream's metrics in upstream's order: (name, type, help).
const METRICS: &[(&str, &str, &str)] = &[
    (
        "patroni_version",
        "gauge",
        "Patroni semver without periods.",
    ),
    (
        "patroni_postgres_running",
        "gauge",
        "Value is 1 if Postgres is running, 0 otherwise.",
    ),
    (
        "patroni_postmaster_start_time",
        "gauge",
        "Epoch seconds since Postgres started.",
    ),
    (
        "patroni_primary",
        "gauge",
        "Value is 1 if this node is the leader, 0 otherwise.",
    ),
    (
        "patroni_xlog_location",
        "counter",
        "Current location of the Postgres transaction log, 0 if this node is not the leader.",
    ),
    (
        "patroni_standby_leader",
        "gauge",
        "Value is 1 if this node is the standby_leader, 0 otherwise.",
    ),
    (
        "patroni_replica",
        "gauge",
        "Value is 1 if this node is a replica, 0 otherwise.",
    ),
    (
        "patroni_sync_standby",
        "gauge",
        "Value is 1 if this node is a sync standby, 0 otherwise.",
    ),
    (
        "patroni_quorum_standby",
        "gauge",
        "Value is 1 if this node is a quorum standby, 0 otherwise.",
    ),
    (
        "patroni_xlog_received_location",
        "counter",
        "Current location of the received Postgres transaction log, 0 if this node is not a replica.",
    ),
    (
        "patroni_xlog_replayed_location",
        "counter",
        "Current location of the replayed Postgres transaction log, 0 if this node is not a replica.",
    ),
    (
        "patroni_xlog_replayed_timestamp",
        "gauge",
        "Current timestamp of the replayed Postgres transaction log, 0 if null.",
    ),
    (
        "patroni_xlog_paused",
        "gauge",
        "Value is 1 if the Postgres xlog is paused, 0 otherwise.",
    ),
    (
        "patroni_postgres_streaming",
        "gauge",
        "Value is 1 if Postgres is streaming, 0 otherwise.",
    ),
    (
        "patroni_postgres_in_archive_recovery",
        "gauge",
        "Value is 1 if Postgres is replicating from archive, 0 otherwise.",
    ),
    (
        "patroni_postgres_server_version",
        "gauge",
        "Version of Postgres (if running), 0 otherwise.",
    ),
    (
        "patroni_cluster_unlocked",
        "gauge",
        "Value is 1 if the cluster is unlocked, 0 if locked.",
    ),
    (
        "patroni_failsafe_mode_is_active",
        "gauge",
        "Value is 1 if failsafe mode is active, 0 if inactive.",
    ),
    (
        "patroni_postgres_timeline",
        "counter",
        "Postgres timeline of this node (if running), 0 otherwise.",
    ),
    (
        "patroni_dcs_last_seen",
        "gauge",
        "Epoch timestamp when DCS was last contacted successfully by Patroni.",
    ),
    (
        "patroni_pending_restart",
        "gauge",
        "Value is 1 if the node needs a restart, 0 otherwise.",
    ),
    (
        "patroni_is_paused",
        "gauge",
        "Value is 1 if auto failover is disabled, 0 otherwise.",
    ),
];

/// Upstream's numeric encoding of the PostgreSQL state (`patroni_postgres_state`).
const STATE_VALUES: &[(&str, PgState)] = &[
    ("initdb", PgState::InitializingNewCluster),
    ("initdb_failed", PgState::InitdbFailed),
    ("custom_bootstrap", PgState::RunningCustomBootstrapScript),
    ("custom_bootstrap_failed", PgState::CustomBootstrapFailed),
    ("creating_replica", PgState::CreatingReplica),
    ("running", PgState::Running),
    ("starting", PgState::Starting),
    ("bootstrap_starting", PgState::StartingAfterCustomBootstrap),
    ("start_failed", PgState::StartFailed),
    ("restarting", PgState::Restarting),
    ("restart_failed", PgState::RestartFailed),
    ("stopping", PgState::Stopping),
    ("stopped", PgState::Stopped),
    ("stop_failed", PgState::StopFailed),
    ("crashed", PgState::Crashed),
];

pub fn render(st: &NodeStatus) -> String {
    let r = patroni_status(st);
    let labels = format!(
        "{{scope=\"{}\",name=\"{}\"}}",
        escape(&st.scope),
        escape(&st.name)
    );
    let mut text = String::new();
    for (name, kind, help) in METRICS {
        let Some(value) = value_of(name, &r) else {
            continue;
        };
        // Writing into a String cannot fail.
        let _ = writeln!(text, "# HELP {name} {help}");
        let _ = writeln!(text, "# TYPE {name} {kind}");
        let _ = writeln!(text, "{name}{labels} {value}");
    }
    postgres_state(&mut text, &labels, &st.state);
    text
}

/// The value of one metric; `None` leaves it out (streaming metrics need PostgreSQL 9.6+).
fn value_of(name: &str, r: &PatroniStatus) -> Option<String> {
    let rs = r.replication_state.as_deref();
    let (location, received, replayed, ts, paused) = match &r.xlog {
        Some(Xlog::Primary { location }) => (*location, 0, 0, None, false),
        Some(Xlog::Replica {
            received_location,
            replayed_location,
            replayed_timestamp,
            paused,
        }) => (
            0,
            *received_location,
            *replayed_location,
            replayed_timestamp.as_deref(),
            *paused,
        ),
        None => (0, 0, 0, None, false),
    };
    let streaming_known = r.server_version.unwrap_or(0) >= 90600;
    let v = match name {
        "patroni_version" => version_digits(),
        "patroni_postgres_running" => b(r.is_running()),
        "patroni_postmaster_start_time" => seconds(r.postmaster_start_time.as_deref()),
        "patroni_primary" => b(r.role == Role::Primary),
        "patroni_xlog_location" => location.to_string(),
        "patroni_standby_leader" => b(r.role == Role::StandbyLeader),
        "patroni_replica" => b(r.role == Role::Replica),
        "patroni_sync_standby" => b(r.sync_standby),
        "patroni_quorum_standby" => b(r.quorum_standby),
        "patroni_xlog_received_location" => received.to_string(),
        "patroni_xlog_replayed_location" => replayed.to_string(),
        "patroni_xlog_replayed_timestamp" => seconds(ts),
        "patroni_xlog_paused" => b(paused),
        "patroni_postgres_streaming" if streaming_known => b(rs == Some("streaming")),
        "patroni_postgres_in_archive_recovery" if streaming_known => {
            b(rs == Some("in archive recovery"))
        }
        "patroni_postgres_server_version" => r.server_version.unwrap_or(0).to_string(),
        "patroni_cluster_unlocked" => b(r.cluster_unlocked),
        // Failsafe mode is not implemented yet, so it is never active.
        "patroni_failsafe_mode_is_active" => b(false),
        "patroni_postgres_timeline" => r.timeline.unwrap_or(0).to_string(),
        "patroni_dcs_last_seen" => r.dcs_last_seen.to_string(),
        "patroni_pending_restart" => b(r.pending_restart),
        "patroni_is_paused" => b(r.pause),
        _ => return None,
    };
    Some(v)
}

/// "4.1.0" -> "040100", as upstream pads each part to two digits.
fn version_digits() -> String {
    crate::PATRONI_VERSION
        .split('.')
        .map(|p| format!("{p:0>2}"))
        .collect()
}

fn seconds(ts: Option<&str>) -> String {
    ts.and_then(epoch).unwrap_or(0.0).to_string()
}

fn postgres_state(text: &mut String, labels: &str, state: &PgState) {
    let values: Vec<String> = STATE_VALUES
        .iter()
        .enumerate()
        .map(|(i, (n, _))| format!("{i}={n}"))
        .collect();
    let value = STATE_VALUES
        .iter()
        .position(|(_, s)| s == state)
        .map_or(-1, |i| i as i64);
    let name = "patroni_postgres_state";
    let _ = writeln!(
        text,
        "# HELP {name} Numeric representation of Postgres state."
    );
    let _ = writeln!(text, "# Values: {}", values.join(", "));
    let _ = writeln!(text, "# TYPE {name} gauge");
    let _ = writeln!(text, "{name}{labels} {value}");
}

fn b(v: bool) -> String {
    u8::from(v).to_string()
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Seconds since the epoch of a PostgreSQL/ISO-8601 timestamp.
fn epoch(ts: &str) -> Option<f64> {
    let parsed = chrono::DateTime::parse_from_rfc3339(ts)
        .or_else(|_| chrono::DateTime::parse_from_str(ts, "%Y-%m-%d %H:%M:%S%.f%#z"))
        .ok()?;
    Some(parsed.timestamp_micros() as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_timestamps() {
        assert_eq!(epoch("1970-01-01T00:00:10.5+00:00"), Some(10.5));
        assert_eq!(epoch("1970-01-01 00:00:10.5+00"), Some(10.5));
        assert_eq!(epoch("junk"), None);
    }
}
