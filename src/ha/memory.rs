//! The few facts the HA core keeps across cycles.

use super::observation::Divergence;
use crate::dcs::Role;
use crate::postgres::types::UpstreamConn;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Memory {
    /// We held the leader key at the end of the last cycle.
    pub has_lock: bool,
    /// Role we last published (kept while PostgreSQL is down, for the member key).
    pub last_role: Role,
    /// Result of the last divergence check, and against which upstream it was made.
    pub divergence: Option<(UpstreamConn, Divergence)>,
    /// A rewind failed; do not loop on it.
    pub rewind_failed: bool,
    /// When PostgreSQL was last seen running without accepting connections (ms), to bound
    /// how long a crashed primary may take to come back.
    pub unhealthy_since_ms: Option<u64>,
    /// Switchover candidate: since when we wait for the former leader's last WAL.
    pub catch_up_since_ms: Option<u64>,
    /// We demoted for a switchover at this time: wait for the new leader instead of
    /// starting on our own.
    pub demoted_for_switchover_ms: Option<u64>,
    /// Leader: member slot name -> when its member was last seen (ms), for
    /// member_slots_ttl. `None` while not the leader.
    pub retain_slots: Option<std::collections::BTreeMap<String, u64>>,
    /// The pre_promote script failed and we released the leader key at this time (ms):
    /// stay out of the leader race for ttl (upstream's backoff).
    pub pre_promote_failed_ms: Option<u64>,
    /// As the leader we began starting our crashed primary at this time (ms); after
    /// primary_start_timeout a healthy replica takes over instead.
    pub primary_start_since_ms: Option<u64>,
}

impl Memory {
    /// Forget per-upstream facts (after the data dir changed under us).
    pub fn reset_rewind_state(&mut self) {
        self.divergence = None;
        self.rewind_failed = false;
    }

    /// The last divergence check's answer, if it was made against `up`.
    pub fn divergence_from(&self, up: &UpstreamConn) -> Option<Divergence> {
        self.divergence
            .as_ref()
            .filter(|(u, _)| u == up)
            .map(|(_, d)| d.clone())
    }
}
