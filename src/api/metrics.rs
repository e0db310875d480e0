//! `/metrics`: the node status in Prometheus text format, with upstream's metric names.

use super::Ctx;
use super::status_json::{Xlog, patroni_status};
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

struct Out {
    text: String,
    labels: String,
}

impl Out {
    fn metric(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        // Writing into a String cannot fail.
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
        let _ = writeln!(self.text, "{name}{} {value}", self.labels);
    }
}

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
    let mut o = Out {
        text: String::new(),
        labels: format!(
            "{{scope=\"{}\",name=\"{}\"}}",
            escape(&st.scope),
            escape(&st.name)
        ),
    };
    let version: String = crate::PATRONI_VERSION
        .split('.')
        .map(|p| format!("{p:0>2}"))
        .collect();
    o.metric(
        "patroni_version",
        "gauge",
        "Patroni semver without periods.",
        version,
    );
    o.metric(
        "patroni_postgres_running",
        "gauge",
        "Value is 1 if Postgres is running, 0 otherwise.",
        b(r.is_running()),
    );
    let start = r
        .postmaster_start_time
        .as_deref()
        .and_then(epoch)
        .unwrap_or(0.0);
    o.metric(
        "patroni_postmaster_start_time",
        "gauge",
        "Epoch seconds since Postgres started.",
        start,
    );
    o.metric(
        "patroni_primary",
        "gauge",
        "Value is 1 if this node is the leader, 0 otherwise.",
        b(r.role == Role::Primary),
    );
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
    o.metric(
        "patroni_xlog_location",
        "counter",
        "Current location of the Postgres transaction log, 0 if this node is not the leader.",
        location,
    );
    o.metric(
        "patroni_standby_leader",
        "gauge",
        "Value is 1 if this node is the standby_leader, 0 otherwise.",
        b(r.role == Role::StandbyLeader),
    );
    o.metric(
        "patroni_replica",
        "gauge",
        "Value is 1 if this node is a replica, 0 otherwise.",
        b(r.role == Role::Replica),
    );
    o.metric(
        "patroni_sync_standby",
        "gauge",
        "Value is 1 if this node is a sync standby, 0 otherwise.",
        b(r.sync_standby),
    );
    o.metric(
        "patroni_quorum_standby",
        "gauge",
        "Value is 1 if this node is a quorum standby, 0 otherwise.",
        b(r.quorum_standby),
    );
    o.metric("patroni_xlog_received_location", "counter", "Current location of the received Postgres transaction log, 0 if this node is not a replica.", received);
    o.metric("patroni_xlog_replayed_location", "counter", "Current location of the replayed Postgres transaction log, 0 if this node is not a replica.", replayed);
    o.metric(
        "patroni_xlog_replayed_timestamp",
        "gauge",
        "Current timestamp of the replayed Postgres transaction log, 0 if null.",
        ts.and_then(epoch).unwrap_or(0.0),
    );
    o.metric(
        "patroni_xlog_paused",
        "gauge",
        "Value is 1 if the Postgres xlog is paused, 0 otherwise.",
        b(paused),
    );
    if r.server_version.unwrap_or(0) >= 90600 {
        let rs = r.replication_state.as_deref();
        o.metric(
            "patroni_postgres_streaming",
            "gauge",
            "Value is 1 if Postgres is streaming, 0 otherwise.",
            b(rs == Some("streaming")),
        );
        o.metric(
            "patroni_postgres_in_archive_recovery",
            "gauge",
            "Value is 1 if Postgres is replicating from archive, 0 otherwise.",
            b(rs == Some("in archive recovery")),
        );
    }
    o.metric(
        "patroni_postgres_server_version",
        "gauge",
        "Version of Postgres (if running), 0 otherwise.",
        r.server_version.unwrap_or(0),
    );
    o.metric(
        "patroni_cluster_unlocked",
        "gauge",
        "Value is 1 if the cluster is unlocked, 0 if locked.",
        b(r.cluster_unlocked),
    );
    o.metric(
        "patroni_failsafe_mode_is_active",
        "gauge",
        "Value is 1 if failsafe mode is active, 0 if inactive.",
        0,
    );
    o.metric(
        "patroni_postgres_timeline",
        "gauge",
        "Postgres timeline of this node (if running), 0 otherwise.",
        r.timeline.unwrap_or(0),
    );
    o.metric(
        "patroni_dcs_last_seen",
        "gauge",
        "Epoch timestamp when DCS was last contacted successfully by Patroni.",
        r.dcs_last_seen,
    );
    o.metric(
        "patroni_pending_restart",
        "gauge",
        "Value is 1 if the node needs a restart, 0 otherwise.",
        b(r.pending_restart),
    );
    o.metric(
        "patroni_is_paused",
        "gauge",
        "Value is 1 if auto failover is disabled, 0 otherwise.",
        b(r.pause),
    );
    postgres_state(&mut o, &st.state);
    o.text
}

fn postgres_state(o: &mut Out, state: &PgState) {
    let values: Vec<String> = STATE_VALUES
        .iter()
        .enumerate()
        .map(|(i, (n, _))| format!("{i}={n}"))
        .collect();
    let value = STATE_VALUES
        .iter()
        .position(|(_, s)| s == state)
        .map_or(-1, |i| i as i64);
    let _ = writeln!(
        o.text,
        "# HELP patroni_postgres_state Numeric representation of Postgres state."
    );
    let _ = writeln!(o.text, "# Values: {}", values.join(", "));
    let _ = writeln!(o.text, "# TYPE patroni_postgres_state gauge");
    let _ = writeln!(o.text, "patroni_postgres_state{} {value}", o.labels);
}

fn b(v: bool) -> u8 {
    u8::from(v)
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
