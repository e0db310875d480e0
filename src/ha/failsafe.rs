//! DCS failsafe mode (`failsafe_mode: true` in the dynamic config).
//!
//! While the DCS works, the leader keeps the `failsafe` key listing every member's REST API.
//! When the DCS cannot be reached, a running primary may stay primary only if every other
//! member listed there answered its POST /failsafe with "Accepted" in this cycle; a member
//! that got such a call treats the primary as alive for `ttl` seconds and does not race
//! for the leader key. Replicas never promote without the DCS.

use super::{Action, Decision, Memory, Observation, decision, observed_state};
use crate::dcs::{Cluster, PgState, Role};
use crate::postgres::types::StopMode;
use std::collections::BTreeMap;

/// One member's answer to our POST /failsafe.
#[derive(Debug, Clone, PartialEq)]
pub enum FailsafeAnswer {
    /// 200 "Accepted", with its received/replayed LSN when it sent one.
    Accepted { lsn: Option<u64> },
    /// It answered but did not accept (e.g. "Running as a leader").
    Refused(String),
    /// No answer in time (connection refused, timeout).
    NoAnswer(String),
}

/// The POST /failsafe round the runtime ran this cycle (only on a running primary that
/// could not reach the DCS, with failsafe mode on).
#[derive(Debug, Clone, PartialEq)]
pub struct FailsafeRound {
    /// Our own name is in the last known `failsafe` key (otherwise we may not continue).
    pub listed: bool,
    /// Every other member of the key and what it answered.
    pub answers: Vec<(String, FailsafeAnswer)>,
}

/// The last POST /failsafe this node received from a primary.
#[derive(Debug, Clone, PartialEq)]
pub struct FailsafeContact {
    pub leader: String,
    /// How long ago (ms) it arrived.
    pub age_ms: u64,
}

/// Failsafe inputs of one cycle.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FailsafeInput {
    pub round: Option<FailsafeRound>,
    pub contact: Option<FailsafeContact>,
    /// How long ago (ms) a DCS read last showed a leader key, counted from when that read
    /// started; `None` when no read has shown one since the daemon started. A contact
    /// older than that was superseded by the DCS: the outage it was sent in has ended.
    pub leader_seen_age_ms: Option<u64>,
}

impl FailsafeInput {
    /// The contact from a primary that still speaks for the cluster: from another member,
    /// younger than `ttl_ms`, and sent after the DCS last showed a leader.
    fn live_contact(&self, me: &str, ttl_ms: u64) -> Option<&FailsafeContact> {
        self.contact.as_ref().filter(|c| {
            c.leader != me
                && c.age_ms < ttl_ms
                && self.leader_seen_age_ms.is_none_or(|seen| c.age_ms < seen)
        })
    }
}

/// Whether the runtime should run a POST /failsafe round this cycle: the DCS is
/// unreachable, failsafe mode is on and PostgreSQL runs as a primary.
pub fn needs_round(obs: &Observation) -> bool {
    matches!(obs.dcs, super::DcsView::Unreachable(_))
        && obs.config.failsafe_mode
        && !obs.config.paused
        && obs.pg.sql.as_ref().is_some_and(|s| !s.in_recovery)
}

/// A running primary without the DCS, failsafe mode on: keep running only if every member
/// listed in the `failsafe` key accepted; otherwise demote (immediate stop, bounded).
pub(super) fn primary_without_dcs(obs: &Observation, mem: &mut Memory, err: &str) -> Decision {
    match round_verdict(obs.failsafe.round.as_ref()) {
        Ok(who) => {
            mem.has_lock = true;
            let mut d = decision(
                obs,
                format!(
                    "continue to run as a leader because failsafe mode is enabled and all members are accessible ({who}); DCS error: {err}"
                ),
                vec![],
                Role::Primary,
                observed_state(obs),
            );
            d.touch_member = false;
            d
        }
        Err(why) => {
            mem.has_lock = false;
            let mut d = decision(
                obs,
                format!(
                    "demoting self because DCS is not accessible and I was a leader, and failsafe mode cannot keep me primary: {why} ({err})"
                ),
                vec![Action::Stop {
                    mode: StopMode::Immediate,
                }],
                Role::Demoted,
                PgState::Stopping,
            );
            d.touch_member = false;
            d
        }
    }
}

/// `Ok(who accepted)` when every listed member accepted, `Err(why not)` otherwise.
fn round_verdict(round: Option<&FailsafeRound>) -> Result<String, String> {
    let round = round.ok_or("no POST /failsafe round could be run")?;
    if !round.listed {
        return Err("this node is not listed in the failsafe key".into());
    }
    let failed: Vec<String> = round
        .answers
        .iter()
        .filter_map(|(name, a)| match a {
            FailsafeAnswer::Accepted { .. } => None,
            FailsafeAnswer::Refused(m) => Some(format!("{name} refused: {m}")),
            FailsafeAnswer::NoAnswer(e) => Some(format!("{name} did not answer: {e}")),
        })
        .collect();
    if !failed.is_empty() {
        return Err(format!(
            "not every member acknowledged POST /failsafe: {}",
            failed.join("; ")
        ));
    }
    if round.answers.is_empty() {
        return Ok("single-member cluster".into());
    }
    let names: Vec<&str> = round.answers.iter().map(|(n, _)| n.as_str()).collect();
    Ok(format!("acknowledged by {}", names.join(", ")))
}

/// Nobody holds the leader key and failsafe mode is on: a replica does not race while a
/// primary told it via POST /failsafe (within ttl, and since the DCS last showed a leader)
/// that it is still running, nor when it is missing from the `failsafe` key.
pub(super) fn blocks_race(obs: &Observation, cluster: &Cluster) -> Option<Decision> {
    if !obs.config.failsafe_mode || !obs.pg.sql.as_ref().is_some_and(|s| s.in_recovery) {
        return None;
    }
    let me = obs.config.name.as_str();
    let ttl_ms = obs.config.ttl.saturating_mul(1000);
    let why = match obs.failsafe.live_contact(me, ttl_ms) {
        Some(c) => format!(
            "primary {} contacted me through POST /failsafe {} ms ago and is still running",
            c.leader, c.age_ms
        ),
        _ => match &cluster.failsafe {
            Some(f) if !f.contains_key(me) => {
                "I am not listed in the failsafe key, so I may not take the leader key".into()
            }
            _ => return None,
        },
    };
    Some(decision(
        obs,
        format!("no action. I am ({me}), a secondary, and the cluster has no leader, but {why}"),
        vec![],
        Role::Replica,
        PgState::Running,
    ))
}

/// What the leader keeps in the `failsafe` key: every member with a REST API url.
pub fn topology(cluster: &Cluster) -> BTreeMap<String, String> {
    cluster
        .members
        .iter()
        .filter_map(|m| Some((m.name.clone(), m.data.api_url.clone()?)))
        .collect()
}

/// The leader's write of the `failsafe` key when failsafe mode is on and the members changed.
pub(super) fn leader_actions(obs: &Observation, cluster: &Cluster) -> Vec<Action> {
    if !obs.config.failsafe_mode {
        return vec![];
    }
    let want = topology(cluster);
    if want.is_empty() || cluster.failsafe.as_ref() == Some(&want) {
        return vec![];
    }
    vec![Action::WriteFailsafe(want)]
}
