//! Requests the REST API hands to the HA loop and the loop's answers. The API validates
//! what it can from the published `NodeStatus`; the loop decides and acts (it alone drives
//! PostgreSQL), then replies on the oneshot channel.

use chrono::{DateTime, FixedOffset};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// POST /restart, after the API checked its conditions (role, postgres_version,
/// restart_pending) against the published status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RestartRequest {
    /// Run at this time instead of now (the reply is then `Accepted`).
    pub schedule: Option<DateTime<FixedOffset>>,
    /// Give up waiting for PostgreSQL to come back after this long (the restart itself
    /// continues; upstream answers 503 then).
    pub timeout: Option<Duration>,
    /// Conditions re-checked when a scheduled restart fires (upstream does the same).
    pub restart_pending: bool,
    pub role: Option<String>,
    pub postgres_version: Option<String>,
    /// pg_postmaster_start_time() when the restart was scheduled: a postmaster started
    /// since then means the restart already happened (upstream cancels it then).
    pub postmaster_start_time: Option<String>,
}

/// POST /reinitialize.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReinitRequest {
    /// Cancel a running job (bootstrap, rewind...) first instead of refusing.
    pub force: bool,
    /// Take the base backup from the leader even when another member is configured.
    pub from_leader: bool,
}

#[derive(Debug)]
pub enum NodeCommand {
    Restart(RestartRequest, oneshot::Sender<CommandReply>),
    /// DELETE /restart: drop a scheduled restart.
    CancelScheduledRestart(oneshot::Sender<CommandReply>),
    Reinitialize(ReinitRequest, oneshot::Sender<CommandReply>),
    /// POST /failsafe from the primary `leader` (answered by the API at once; the loop
    /// only notes it so it does not race for the leader key for ttl seconds).
    FailsafeContact {
        leader: String,
        at: std::time::Instant,
    },
}

/// The loop's answer, with upstream's status codes in mind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandReply {
    /// 200 with this text ("restarted successfully", "reinitialize started").
    Done(String),
    /// 202: accepted for later ("Restart scheduled").
    Accepted(String),
    /// Refused or failed: HTTP status and the text upstream uses for it
    /// (409 "Another restart is already scheduled", 503 "I am the leader, can not reinitialize").
    Refused { status: u16, message: String },
}

pub type CommandSender = mpsc::Sender<NodeCommand>;
pub type CommandReceiver = mpsc::Receiver<NodeCommand>;

/// A bounded channel: a flood of API calls waits instead of piling up in memory.
pub fn channel() -> (CommandSender, CommandReceiver) {
    mpsc::channel(16)
}
