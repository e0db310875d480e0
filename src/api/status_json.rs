//! The node status document of `GET /patroni` and of every GET health check, built only from
//! the `NodeStatus` the HA loop published. Peers parse it during the leader race (`xlog`,
//! `role`, `timeline`, `tags`, `watchdog_failed`), so field names and shapes follow upstream.

use crate::config::DynamicConfig;
use crate::dcs::{Cluster, PgState, Role};
use crate::postgres::types::{ReplicationConn, SqlObservation};
use crate::status::NodeStatus;
use serde::Serialize;
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PatroniStatus {
    pub state: PgState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postmaster_start_time: Option<String>,
    pub role: Role,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xlog: Option<Xlog>,
    #[serde(skip_serializing_if = "is_false")]
    pub sync_standby: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub quorum_standby: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication_state: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replication: Vec<Replication>,
    #[serde(skip_serializing_if = "is_false")]
    pub pause: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub cluster_unlocked: bool,
    pub dcs_last_seen: i64,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub tags: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_system_identifier: Option<String>,
    #[serde(skip_serializing_if = "is_false")]
    pub pending_restart: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_restart_reason: Option<Map<String, Value>>,
    /// A restart scheduled with POST /restart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled_restart: Option<Value>,
    pub patroni: PatroniInfo,
    #[serde(skip_serializing_if = "is_false")]
    pub watchdog_failed: bool,
}

/// WAL positions: a primary reports where it writes, a replica what it received and replayed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Xlog {
    Primary {
        location: u64,
    },
    Replica {
        received_location: u64,
        replayed_location: u64,
        replayed_timestamp: Option<String>,
        paused: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Replication {
    pub usename: String,
    pub application_name: String,
    pub client_addr: Option<String>,
    pub state: String,
    pub sync_state: String,
    pub sync_priority: i32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PatroniInfo {
    pub version: &'static str,
    pub scope: String,
    pub name: String,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl PatroniStatus {
    /// Replayed WAL position (0 when not a replica), as the lag checks use it.
    pub fn replayed_location(&self) -> u64 {
        match self.xlog {
            Some(Xlog::Replica {
                replayed_location, ..
            }) => replayed_location,
            _ => 0,
        }
    }

    pub fn received_location(&self) -> u64 {
        match self.xlog {
            Some(Xlog::Replica {
                received_location, ..
            }) => received_location,
            _ => 0,
        }
    }

    pub fn is_running(&self) -> bool {
        self.state == PgState::Running
    }
}

/// Build the status document. PostgreSQL facts are only reported while it is running (or
/// starting/restarting) and the last SQL probe succeeded, as upstream only queries then.
pub fn patroni_status(st: &NodeStatus) -> PatroniStatus {
    let queried = matches!(
        st.state,
        PgState::Running | PgState::Restarting | PgState::Starting
    );
    let mut out = PatroniStatus {
        state: st.state.clone(),
        postmaster_start_time: None,
        role: routing_role(st.role),
        server_version: None,
        xlog: None,
        sync_standby: false,
        quorum_standby: false,
        timeline: None,
        replication_state: None,
        replication: Vec::new(),
        pause: st.is_paused(),
        cluster_unlocked: st.cluster_unlocked || st.cluster.is_none(),
        dcs_last_seen: st.dcs_last_seen.unwrap_or(0),
        tags: st.tags.clone(),
        database_system_identifier: sysid(st),
        pending_restart: false,
        pending_restart_reason: None,
        scheduled_restart: None,
        patroni: PatroniInfo {
            version: crate::PATRONI_VERSION,
            scope: st.scope.clone(),
            name: st.name.clone(),
        },
        watchdog_failed: st.watchdog_failed,
    };
    if st.pending_restart || !st.pending_restart_reason.is_empty() {
        out.pending_restart = true;
        out.pending_restart_reason = Some(st.pending_restart_reason.clone());
    }
    out.scheduled_restart.clone_from(&st.scheduled_restart);
    match (&st.pg, queried) {
        (Some(pg), true) => fill_from_sql(&mut out, st, pg),
        // Upstream says "unknown" when it believes PostgreSQL runs but cannot query it.
        _ if st.state == PgState::Running => out.state = PgState::Other("unknown".into()),
        _ => {}
    }
    out
}

fn fill_from_sql(out: &mut PatroniStatus, st: &NodeStatus, pg: &SqlObservation) {
    out.postmaster_start_time = Some(pg.postmaster_start_time.clone());
    out.server_version = Some(pg.server_version);
    out.timeline = (pg.timeline > 0).then_some(pg.timeline);
    out.replication = pg.replication.iter().map(replication_entry).collect();
    if !pg.in_recovery {
        // The loop flips its published role before demoting, so trust it over SQL then.
        out.role = match st.role {
            Role::Primary | Role::Promoted | Role::Uninitialized => Role::Primary,
            other => routing_role(other),
        };
        out.xlog = Some(Xlog::Primary {
            location: pg.wal_lsn,
        });
        return;
    }
    out.role = if st.role == Role::StandbyLeader {
        Role::StandbyLeader
    } else {
        Role::Replica
    };
    // Peers take max(received, replayed); a null would make them count us unreachable.
    let replayed = pg.replay_lsn.unwrap_or(0);
    out.xlog = Some(Xlog::Replica {
        received_location: pg.receive_lsn.or(pg.replay_lsn).unwrap_or(0),
        replayed_location: replayed,
        replayed_timestamp: pg.replay_timestamp.clone(),
        paused: pg.replay_paused,
    });
    out.replication_state = replication_state(pg, &st.dynamic);
    if out.role == Role::Replica {
        match sync_membership(st) {
            Some(Role::QuorumStandby) => out.quorum_standby = true,
            Some(Role::SyncStandby) => out.sync_standby = true,
            _ => {}
        }
    }
}

/// Roles that only exist in /cluster output never describe this node's own PostgreSQL.
fn routing_role(role: Role) -> Role {
    match role {
        Role::SyncStandby | Role::QuorumStandby => Role::Replica,
        r => r,
    }
}

fn sysid(st: &NodeStatus) -> Option<String> {
    st.database_system_identifier
        .clone()
        .or_else(|| st.pg.as_ref().map(|p| p.system_identifier.clone()))
        .filter(|s| !s.is_empty())
}

fn replication_entry(r: &ReplicationConn) -> Replication {
    Replication {
        usename: r.usename.clone(),
        application_name: r.application_name.clone(),
        client_addr: r.client_addr.clone(),
        state: r.state.clone(),
        sync_state: r.sync_state.clone(),
        sync_priority: r.sync_priority,
    }
}

/// "streaming" while the WAL receiver streams; "in archive recovery" when it does not but a
/// `restore_command` is configured (from the dynamic configuration, the only place we see it).
fn replication_state(pg: &SqlObservation, dynamic: &DynamicConfig) -> Option<String> {
    if pg
        .wal_receiver
        .as_ref()
        .is_some_and(|w| w.status == "streaming")
    {
        return Some("streaming".into());
    }
    let has_restore = |m: Option<&Map<String, Value>>| {
        m.and_then(|m| m.get("restore_command"))
            .and_then(Value::as_str)
            .is_some_and(|s| !s.trim().is_empty())
    };
    let pgc = &dynamic.postgresql;
    (has_restore(Some(&pgc.parameters)) || has_restore(pgc.recovery_conf.as_ref()))
        .then(|| "in archive recovery".into())
}

/// `Some(SyncStandby|QuorumStandby)` when synchronous mode is on and the `sync` key lists us.
pub fn sync_membership(st: &NodeStatus) -> Option<Role> {
    let cluster = st.cluster.as_deref()?;
    sync_role_of(cluster, &st.dynamic, &st.name)
}

pub fn sync_role_of(cluster: &Cluster, dynamic: &DynamicConfig, name: &str) -> Option<Role> {
    if !dynamic.synchronous_enabled() {
        return None;
    }
    let listed = cluster
        .sync
        .as_ref()?
        .members()
        .iter()
        .any(|m| m.eq_ignore_ascii_case(name));
    listed.then(|| {
        if is_quorum_mode(dynamic) {
            Role::QuorumStandby
        } else {
            Role::SyncStandby
        }
    })
}

pub fn is_quorum_mode(dynamic: &DynamicConfig) -> bool {
    dynamic.synchronous_mode.as_str() == Some("quorum")
}

/// Upstream counts a standby cluster as configured only when it names a source.
pub fn is_standby_cluster(dynamic: &DynamicConfig) -> bool {
    dynamic.standby_cluster.as_ref().is_some_and(|sc| {
        ["host", "port", "restore_command"]
            .iter()
            .any(|k| sc.get(*k).is_some_and(truthy))
    })
}

/// Python truthiness of a JSON value, as upstream's config checks use it.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}
