//! Manual switchover / failover, driven by the DCS `failover` key that the REST API (or
//! patronictl) writes: `{"leader": from, "member": candidate, "scheduled_at": when}`.
//!
//! Leader side: when the request is due and a candidate is healthy, demote cleanly (fast
//! shutdown writes the shutdown checkpoint and walsenders ship it) and release the key
//! with that checkpoint as the last optime. Candidate side: take the key only once our
//! received WAL is past that position, so the old primary can follow without pg_rewind.

use super::Observation;
use crate::dcs::{Cluster, Failover};
use chrono::{DateTime, FixedOffset};

/// How long a switchover candidate waits for the former leader's last WAL before it
/// promotes anyway (the former primary then needs pg_rewind).
pub const CATCH_UP_BUDGET_MS: u64 = 5_000;

/// A failover key that asks for something (upstream treats `{}` as no request).
pub fn pending(cluster: &Cluster) -> Option<&Failover> {
    cluster
        .failover
        .as_ref()
        .filter(|f| f.leader.is_some() || f.member.is_some())
}

/// Upstream's accepted timestamp forms: ISO 8601 with a time zone.
pub fn parse_scheduled_at(s: &str) -> Option<DateTime<FixedOffset>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .or_else(|| DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z").ok())
        .or_else(|| DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%:z").ok())
        .or_else(|| DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%z").ok())
}

/// Whether a scheduled action is due (upstream's `should_run_scheduled_action`).
#[derive(Debug, Clone, PartialEq)]
pub enum Due {
    Now,
    /// In the future: wait, saying when.
    Later(String),
    /// Within the next loop_wait: run again in this many ms and fire then (upstream sleeps
    /// until the moment instead of firing up to a loop_wait early).
    Soon(u64),
    /// Unparseable or missed by more than 1.5 loop_wait: clear it.
    Stale(String),
}

pub fn due(scheduled_at: Option<&str>, wall_ms: i64, loop_wait_s: u64) -> Due {
    let Some(s) = scheduled_at else {
        return Due::Now;
    };
    match parse_scheduled_at(s) {
        Some(at) => due_at(
            at.timestamp_millis(),
            || s.to_string(),
            wall_ms,
            loop_wait_s,
        ),
        None => Due::Stale(format!("cannot parse scheduled_at '{s}'")),
    }
}

/// `due` for a moment already parsed (`at_ms`, shown as `shown()` in messages).
pub fn due_at(at_ms: i64, shown: impl Fn() -> String, wall_ms: i64, loop_wait_s: u64) -> Due {
    let delta_ms = at_ms - wall_ms;
    let lw_ms = loop_wait_s as i64 * 1000;
    if delta_ms > lw_ms {
        Due::Later(format!("at {} (in {} seconds)", shown(), delta_ms / 1000))
    } else if delta_ms > 0 {
        Due::Soon(delta_ms as u64)
    } else if delta_ms < -(lw_ms * 3 / 2) {
        Due::Stale(format!("scheduled at {}, which has passed", shown()))
    } else {
        Due::Now
    }
}

/// What the leader does about a pending request this cycle.
#[derive(Debug, Clone, PartialEq)]
pub enum LeaderStep {
    /// Not yet due: keep leading (and run again after this many ms when it is close).
    Wait(String, Option<u64>),
    /// Invalid, stale or impossible: clear the key and keep leading.
    Clear(String),
    /// Demote now in favour of the candidate (or the healthiest member).
    Demote(String),
}

pub fn leader_step(obs: &Observation, cluster: &Cluster, f: &Failover) -> LeaderStep {
    let me = obs.config.name.as_str();
    let due_now = if obs.config.paused && f.scheduled_at.is_some() {
        // Upstream ignores scheduled switchovers while paused.
        Due::Stale("scheduled switchovers are not run while paused".into())
    } else {
        due(f.scheduled_at.as_deref(), obs.wall_ms, obs.config.loop_wait)
    };
    match due_now {
        Due::Later(when) => return LeaderStep::Wait(format!("awaiting switchover {when}"), None),
        Due::Soon(ms) => {
            let when = f.scheduled_at.as_deref().unwrap_or_default();
            return LeaderStep::Wait(
                format!("awaiting switchover at {when} (in {ms} ms)"),
                Some(ms),
            );
        }
        Due::Stale(why) => return LeaderStep::Clear(format!("found a stale switchover: {why}")),
        Due::Now => {}
    }
    if let Some(from) = f.leader.as_deref().filter(|l| *l != me) {
        return LeaderStep::Clear(format!(
            "manual failover: leader name does not match: {from} != {me}"
        ));
    }
    match f.member.as_deref() {
        Some(c) if c == me => LeaderStep::Clear(
            "manual failover: I am already the leader, no need to failover".into(),
        ),
        Some(c)
            if obs.config.sync.enabled()
                && cluster.sync.as_ref().is_some_and(|s| s.leader.is_some())
                && !super::sync::is_sync_member(cluster, c) =>
        {
            LeaderStep::Clear(format!(
                "manual failover: candidate '{c}' is not a synchronous standby"
            ))
        }
        Some(c) => match cluster.member(c) {
            None => LeaderStep::Clear(format!("manual failover: candidate '{c}' is not a member")),
            Some(_) => match candidate_health(obs, cluster, c) {
                Ok(()) => LeaderStep::Demote(format!("manual failover: demoting myself for '{c}'")),
                Err(why) => LeaderStep::Clear(format!(
                    "manual failover: candidate '{c}' is not healthy ({why}); switchover not possible"
                )),
            },
        },
        None => {
            let any = obs
                .peers
                .iter()
                .any(|p| candidate_health(obs, cluster, &p.name).is_ok());
            if any {
                LeaderStep::Demote(
                    "manual failover: demoting myself for the healthiest member".into(),
                )
            } else {
                LeaderStep::Clear(
                    "manual failover: no healthy members found, failover is not possible".into(),
                )
            }
        }
    }
}

/// A peer may take over if it answered, runs as a replica, is not tagged nofailover, and
/// (with check_timeline) is on the cluster's timeline.
fn candidate_health(obs: &Observation, cluster: &Cluster, name: &str) -> Result<(), String> {
    let p = obs
        .peers
        .iter()
        .find(|p| p.name == name)
        .ok_or("no status from it")?;
    let r = p.reply.as_ref().ok_or("its REST API did not answer")?;
    if r.is_primary {
        return Err("it runs as a primary".into());
    }
    if r.nofailover {
        return Err("it is tagged nofailover".into());
    }
    if r.watchdog_failed {
        return Err("its watchdog failed".into());
    }
    if let Some(why) = super::crash::timeline_behind(obs, cluster, r.timeline) {
        return Err(format!("its {why}"));
    }
    Ok(())
}

/// With no leader and a pending request: `Some(Ok)` take the lock (I am the candidate),
/// `Some(Err)` leave it to the healthy candidate, `None` run the normal election without
/// the former leader.
pub fn no_leader_step(
    obs: &Observation,
    cluster: &Cluster,
    f: &Failover,
) -> Option<Result<(), String>> {
    let me = obs.config.name.as_str();
    let candidate = f.member.as_deref()?;
    if candidate == me {
        // Even a named candidate must hold every acknowledged commit in synchronous mode.
        return Some(super::sync::may_promote(obs, cluster));
    }
    let sync_gated = obs.config.sync.enabled()
        && cluster.sync.as_ref().is_some_and(|s| s.leader.is_some())
        && !super::sync::is_sync_member(cluster, candidate);
    if sync_gated {
        return None;
    }
    match candidate_health(obs, cluster, candidate) {
        Ok(()) => Some(Err(format!("manual failover to '{candidate}' in progress"))),
        Err(_) => None,
    }
}

/// Candidate of a switchover: has our received WAL reached the former leader's final
/// position (the `status` optime it wrote when releasing the key)?
pub fn caught_up(obs: &Observation, cluster: &Cluster) -> bool {
    let Some(target) = cluster.status.optime else {
        return true;
    };
    let Some(sql) = &obs.pg.sql else { return false };
    let received = sql
        .receive_lsn
        .unwrap_or(0)
        .max(sql.replay_lsn.unwrap_or(0));
    // The optime is the start of the shutdown checkpoint record: we need it whole.
    received > target
}
