//! Every side effect the HA core can ask for. The executor turns these into DCS and
//! PostgreSQL calls; conditional steps (lock races) carry both continuations so the
//! decision stays pure and testable.

use super::observation::Job;
use crate::dcs::{History, PgState, Role};
use crate::postgres::types::{StopMode, UpstreamConn};

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Create the leader key; run `won` or `lost` depending on the outcome.
    AcquireLock { won: Branch, lost: Branch },
    /// Refresh our leader key (and write `status` with our optime); `lost` if it is no longer ours
    /// or the DCS failed.
    UpdateLock { held: Branch, lost: Branch },
    /// Delete our leader key (only if still ours).
    ReleaseLock,
    /// Switchover: fast shutdown (shutdown checkpoint, WAL shipped to standbys), then delete
    /// our leader key with the checkpoint position as the last optime.
    GracefulDemote,
    /// Race for `initialize` (create if absent).
    RaceInitialize { won: Branch, lost: Branch },
    /// Store the system identifier in `initialize`.
    SetInitialize { sysid: String },
    /// Delete `initialize` after a failed bootstrap.
    CancelInitialize,
    /// Write `config` from bootstrap.dcs (only when absent).
    WriteBootstrapConfig,
    /// Rewrite `history` from the timeline history files (leader after a promotion).
    UpdateHistory {
        current: Option<History>,
        timeline: u32,
    },
    /// Clear a stale `failover` key.
    ClearFailover { version: i64 },
    /// Start a background job (the slot is free).
    StartJob(Job),
    /// Cancel the running background job (a start of the primary that took too long).
    CancelJob,
    /// Stop PostgreSQL.
    Stop { mode: StopMode },
    /// Promote a standby to primary.
    Promote,
    /// Point a running standby at a (new) upstream: rewrite its config and reload.
    Follow { upstream: Option<UpstreamConn> },
    /// Remove the data directory (before a fresh basebackup).
    RemoveDataDir,
    /// Write the `sync` key: us as leader, `members` as the standbys that may be promoted
    /// (compare-and-set on `version`; None creates it).
    WriteSyncState {
        members: Vec<String>,
        /// Quorum mode: how many other listed members a candidate must compare with.
        quorum: Option<u32>,
        version: Option<i64>,
    },
    /// Delete the `sync` key (synchronous mode turned off).
    DeleteSyncState { version: Option<i64> },
    /// Set `synchronous_standby_names` (ALTER SYSTEM + reload); None resets it.
    SetSyncStandbyNames(Option<String>),
    /// Create missing physical replication slots (primary).
    CreateSlots(Vec<String>),
    /// Drop slots that are neither wanted nor ignored (inactive ones only).
    DropSlots(Vec<String>),
    /// Create permanent logical slots (primary).
    CreateLogicalSlots(Vec<super::slots::LogicalSlot>),
    /// Move slots forward to the leader's published positions (replica).
    AdvanceSlots(Vec<(String, u64)>),
    /// Copy permanent logical slots' state from the leader, then restart to load them
    /// (replica; PostgreSQL reads pg_replslot only at startup).
    CopyLogicalSlots {
        from: UpstreamConn,
        names: Vec<String>,
    },
    /// Write the `failsafe` key: member name -> REST API url (leader, failsafe mode on).
    WriteFailsafe(std::collections::BTreeMap<String, String>),
}

/// A continuation: more actions and the cycle's message if that branch is taken.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Branch {
    pub actions: Vec<Action>,
    pub message: String,
    /// Role to publish if this branch is taken (None: keep the decision's).
    pub role: Option<Role>,
}

impl Branch {
    pub fn new(message: impl Into<String>, actions: Vec<Action>) -> Branch {
        Branch {
            actions,
            message: message.into(),
            role: None,
        }
    }
    pub fn with_role(mut self, role: Role) -> Branch {
        self.role = Some(role);
        self
    }
}

/// What one cycle decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub actions: Vec<Action>,
    /// Upstream-style one-line summary ("no action. I am (pg0), the leader with the lock").
    pub message: String,
    /// Role published to the REST API *before* actions run (so HAProxy sees 503 first).
    pub role: Role,
    /// State written to our member key.
    pub state: PgState,
    /// Whether to write our member key this cycle.
    pub touch_member: bool,
    /// Run the next cycle after this many ms instead of loop_wait (waiting for something
    /// that happens in well under a loop).
    pub recheck_ms: Option<u64>,
    /// Leader: slot positions and retained member slots to write into `status` together
    /// with the leader key refresh.
    pub status_slots: Option<super::slots::StatusSlots>,
}
