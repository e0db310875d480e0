//! Everything the HA core sees in one cycle. Built by the runtime; never mutated by `decide`.

use crate::dcs::Cluster;
use crate::postgres::types::{PgObservation, UpstreamConn};
use serde_json::{Map, Value};
use std::sync::Arc;

/// The effective settings that matter for decisions (local config merged with the DCS config).
#[derive(Debug, Clone, PartialEq)]
pub struct HaConfig {
    pub name: String,
    pub ttl: u64,
    pub loop_wait: u64,
    pub retry_timeout: u64,
    pub maximum_lag_on_failover: u64,
    pub use_pg_rewind: bool,
    pub use_slots: bool,
    pub remove_data_directory_on_rewind_failure: bool,
    pub remove_data_directory_on_diverged_timelines: bool,
    pub tags: Map<String, Value>,
    /// Maintenance mode (`pause: true` in the dynamic config): no automatic start, stop,
    /// promote or demote.
    pub paused: bool,
    pub sync: super::sync::SyncConfig,
    /// `standby_cluster` in the dynamic configuration (None: a normal cluster).
    pub standby_cluster: Option<super::standby::StandbyCluster>,
    /// `slots`, `ignore_slots`, `member_slots_ttl`.
    pub slots: super::slots::SlotsConfig,
    /// `failsafe_mode: true` in the dynamic config.
    pub failsafe_mode: bool,
    /// `primary_start_timeout` and `check_timeline` from the dynamic config.
    pub lifecycle: LifecycleConfig,
    /// A replica creation method with `no_leader` is configured: an empty member may
    /// restore itself (from a backup) while the cluster has no leader.
    pub clone_without_leader: bool,
}

/// Dynamic settings about a crashed or starting primary and the leader race.
#[derive(Debug, Clone, PartialEq)]
pub struct LifecycleConfig {
    /// Seconds the leader waits for its own start of a crashed primary before it hands
    /// over to a healthy replica; 0: hand over at once instead of restarting in place.
    pub primary_start_timeout: u64,
    /// A member whose timeline is older than the cluster's (from `history`) may not lead.
    pub check_timeline: bool,
    /// `primary_stop_timeout` (seconds, 0: unset); applied by the executor's stops.
    pub primary_stop_timeout: u64,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            primary_start_timeout: 300,
            check_timeline: false,
            primary_stop_timeout: 0,
        }
    }
}

impl HaConfig {
    pub fn nofailover(&self) -> bool {
        crate::dcs::tag_is_true(self.tags.get("nofailover"))
            || matches!(self.tags.get("failover_priority"), Some(v) if v.as_i64() == Some(0))
    }
    pub fn failover_priority(&self) -> i64 {
        self.tags
            .get("failover_priority")
            .and_then(Value::as_i64)
            .unwrap_or(1)
    }
}

/// The cluster as read this cycle, or why it could not be read.
#[derive(Debug, Clone, PartialEq)]
pub enum DcsView {
    Ok(Arc<Cluster>),
    Unreachable(String),
}

/// Work that runs in the background job slot (it may outlast a cycle).
#[derive(Debug, Clone, PartialEq)]
pub enum Job {
    /// initdb, start as primary, create users, post_bootstrap.
    Bootstrap,
    /// Create a replica from the upstream with the configured `create_replica_methods`
    /// (pg_basebackup by default), then start as a standby of it.
    Basebackup { from: UpstreamConn },
    /// No leader, but a `no_leader` replica method can restore the data directory.
    CloneWithoutLeader,
    /// Compare our timeline/LSN with the leader's history.
    CheckDivergence { from: UpstreamConn },
    /// pg_rewind from the leader, then start as its standby.
    Rewind { from: UpstreamConn },
    /// Start PostgreSQL (and wait until it accepts connections).
    Start {
        role: crate::postgres::types::ConfigRole,
    },
    /// POST /restart: fast stop and start again in the same role.
    Restart {
        role: crate::postgres::types::ConfigRole,
    },
    /// POST /reinitialize: stop, wipe the data directory, clone again from `from`, start.
    Reinitialize { from: UpstreamConn },
}

impl Job {
    pub fn describe(&self) -> &'static str {
        match self {
            Job::Bootstrap => "bootstrap",
            Job::Basebackup { .. } => "replica creation",
            Job::CloneWithoutLeader => "replica creation without a leader",
            Job::CheckDivergence { .. } => "timeline divergence check",
            Job::Rewind { .. } => "pg_rewind",
            Job::Start { .. } => "PostgreSQL start",
            Job::Restart { .. } => "restart",
            Job::Reinitialize { .. } => "reinitialize",
        }
    }
}

/// The result of a divergence check.
#[derive(Debug, Clone, PartialEq)]
pub enum Divergence {
    NotDiverged,
    Diverged(String),
    Unknown(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    Ok,
    Divergence(Divergence),
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Default)]
pub enum JobState {
    #[default]
    Idle,
    Running(Job),
    /// Finished since the last cycle; reported exactly once.
    Finished(Job, JobOutcome),
}

/// What a peer's GET /patroni said, as far as the leader race cares.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStatus {
    pub name: String,
    /// `None`: did not answer in time (counts as unknown, not as healthier).
    pub reply: Option<PeerReply>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PeerReply {
    pub is_primary: bool,
    pub wal_position: u64,
    pub timeline: Option<u32>,
    pub nofailover: bool,
    pub failover_priority: i64,
    pub watchdog_failed: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Milliseconds on a monotonic clock (only differences matter).
    pub now_ms: u64,
    /// Wall clock, Unix milliseconds (for scheduled switchovers and restarts).
    pub wall_ms: i64,
    pub config: HaConfig,
    pub dcs: DcsView,
    pub pg: PgObservation,
    pub job: JobState,
    /// Filled only when `needs_peers` said so.
    pub peers: Vec<PeerStatus>,
    /// POST /failsafe round (primary without DCS) and the last contact from a primary.
    pub failsafe: super::failsafe::FailsafeInput,
}
