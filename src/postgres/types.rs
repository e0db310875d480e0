//! Plain data describing PostgreSQL: what was observed, and what we want written/started.
//! No I/O here; the HA core reads these types.

use serde::Serialize;
use std::collections::BTreeMap;

/// State of the data directory, read from disk (pg_controldata) without a connection.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum DataDirState {
    /// The directory does not exist or is empty.
    #[default]
    Empty,
    /// Contains a cluster; controldata facts.
    Initialized(ControlData),
    /// Non-empty but not a usable cluster (no PG_VERSION / pg_controldata failed).
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ControlData {
    pub system_identifier: String,
    /// "in production", "shut down", "shut down in recovery", "in archive recovery", "in crash recovery".
    pub cluster_state: String,
    /// "Latest checkpoint's TimeLineID".
    pub timeline: u32,
    /// "Latest checkpoint location" as an LSN integer.
    pub checkpoint_lsn: u64,
    /// "Minimum recovery ending location's timeline" (0 when none).
    pub min_recovery_timeline: u32,
    pub min_recovery_lsn: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WalReceiver {
    pub status: String,
    pub sender_host: Option<String>,
    pub sender_port: Option<u16>,
    pub slot_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplicationConn {
    pub usename: String,
    pub application_name: String,
    pub client_addr: Option<String>,
    pub state: String,
    pub sync_state: String,
    pub sync_priority: i32,
    pub write_lsn: Option<u64>,
    pub flush_lsn: Option<u64>,
    pub replay_lsn: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct SlotInfo {
    pub name: String,
    /// "physical" or "logical".
    pub slot_type: String,
    pub active: bool,
    pub restart_lsn: Option<u64>,
    /// Logical slots: output plugin, database and confirmed_flush_lsn.
    pub plugin: Option<String>,
    pub database: Option<String>,
    pub confirmed_flush_lsn: Option<u64>,
}

impl SlotInfo {
    /// The position this slot holds: confirmed_flush_lsn for logical slots, restart_lsn
    /// for physical ones.
    pub fn position(&self) -> Option<u64> {
        self.confirmed_flush_lsn.or(self.restart_lsn)
    }
}

/// What one SQL round trip tells us about a running server.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SqlObservation {
    pub in_recovery: bool,
    pub timeline: u32,
    /// Primary: pg_current_wal_lsn; replica: max(receive, replay).
    pub wal_lsn: u64,
    pub receive_lsn: Option<u64>,
    pub replay_lsn: Option<u64>,
    pub replay_paused: bool,
    /// ISO-8601 of pg_last_xact_replay_timestamp().
    pub replay_timestamp: Option<String>,
    /// e.g. 150004.
    pub server_version: u32,
    pub system_identifier: String,
    /// ISO-8601 of pg_postmaster_start_time().
    pub postmaster_start_time: String,
    pub wal_receiver: Option<WalReceiver>,
    pub replication: Vec<ReplicationConn>,
    pub slots: Vec<SlotInfo>,
    /// GUCs with pending_restart = true, name -> current setting.
    pub pending_restart: BTreeMap<String, String>,
    pub synchronous_standby_names: String,
}

/// Everything observed about the local PostgreSQL in one cycle. "Not running" is data.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PgObservation {
    pub data_dir: DataDirState,
    /// PID of a live postmaster owning the data dir (postmaster.pid checked), if any.
    pub postmaster_pid: Option<u32>,
    /// `None` when no connection could be made (stopped, starting, crashed).
    pub sql: Option<SqlObservation>,
    /// The upstream server the standby config we wrote points at, if any (from our own
    /// postgresql.conf / standby.signal): `(host, port)`.
    pub configured_primary: Option<(String, u16)>,
    /// `standby.signal` exists.
    pub standby_signal: bool,
    /// Short reason when the SQL probe failed (for logs).
    pub sql_error: Option<String>,
}

impl PgObservation {
    pub fn is_running(&self) -> bool {
        self.postmaster_pid.is_some()
    }
    pub fn is_healthy(&self) -> bool {
        self.sql.is_some()
    }
    pub fn system_identifier(&self) -> Option<&str> {
        if let Some(s) = &self.sql {
            return Some(&s.system_identifier);
        }
        match &self.data_dir {
            DataDirState::Initialized(c) => Some(&c.system_identifier),
            _ => None,
        }
    }
}

/// `UpstreamConn::member` of the remote primary a standby cluster's leader follows
/// (`standby_cluster.host`/`port` in the dynamic configuration): its recovery settings
/// come from that section, not from our own member.
pub const REMOTE_PRIMARY: &str = "(standby_cluster remote primary)";

/// Where a standby streams from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConn {
    pub host: String,
    pub port: u16,
    /// Member name of the upstream (for logs).
    pub member: String,
}

/// The role PostgreSQL should be configured for when (re)writing its config.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigRole {
    Primary,
    /// Standby following `upstream` (None: standby with no upstream yet, e.g. leaderless).
    Standby {
        upstream: Option<UpstreamConn>,
        slot_name: Option<String>,
    },
}

/// How to stop PostgreSQL (pg_ctl -m).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    Smart,
    Fast,
    Immediate,
}

impl StopMode {
    pub fn as_str(self) -> &'static str {
        match self {
            StopMode::Smart => "smart",
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// Parse "0/3000060" into an integer LSN.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// Format an integer LSN as "0/3000060".
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn lsn_round_trip() {
        assert_eq!(parse_lsn("0/3000060"), Some(0x3000060));
        assert_eq!(parse_lsn("1/0"), Some(1 << 32));
        assert_eq!(format_lsn(0x1_0300_0060), "1/3000060");
        assert_eq!(parse_lsn("junk"), None);
    }
}
