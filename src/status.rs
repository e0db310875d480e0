//! The state the HA loop publishes after every cycle. The REST API answers from this
//! (over a `tokio::sync::watch` channel) and never reaches into the loop.

use crate::config::DynamicConfig;
use crate::dcs::{Cluster, PgState, Role};
use crate::postgres::types::SqlObservation;
use serde_json::{Map, Value};
use std::sync::Arc;

#[derive(Debug, Clone, Default)]
pub struct NodeStatus {
    pub name: String,
    pub scope: String,
    /// Role PostgreSQL plays *as far as routing is concerned*: set to `Demoted`/`Replica`
    /// before pg_ctl demotes, so health checks fail first.
    pub role: Role,
    pub state: PgState,
    /// Last SQL observation (None when PostgreSQL is not accepting connections).
    pub pg: Option<SqlObservation>,
    pub database_system_identifier: Option<String>,
    /// We hold the leader key as of the last cycle.
    pub has_lock: bool,
    /// Last snapshot said nobody holds the leader key.
    pub cluster_unlocked: bool,
    /// Unix seconds of the last successful DCS read.
    pub dcs_last_seen: Option<i64>,
    pub tags: Map<String, Value>,
    /// The effective dynamic configuration (from the DCS, or bootstrap.dcs before init).
    pub dynamic: DynamicConfig,
    /// Last cluster snapshot, for /cluster, /history, /config.
    pub cluster: Option<Arc<Cluster>>,
    pub pending_restart: bool,
    /// A restart scheduled with POST /restart {"schedule": ...}: upstream's
    /// `scheduled_restart` object ({"schedule": ISO time, "postgres_version"?: ...}).
    pub scheduled_restart: Option<Value>,
    pub pending_restart_reason: Map<String, Value>,
    pub watchdog_failed: bool,
    /// True once the first cycle completed (readiness).
    pub loop_running: bool,
    /// Unix seconds when the HA loop last finished a cycle (liveness).
    pub last_cycle_at: Option<i64>,
    /// The per-cycle message, as upstream logs it ("no action. I am (pg0), the leader with the lock").
    pub last_message: String,
    pub conn_url: Option<String>,
    pub api_url: Option<String>,
}

impl NodeStatus {
    pub fn is_paused(&self) -> bool {
        self.dynamic.pause
    }
}
