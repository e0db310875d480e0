//! A crashed primary that still holds the leader key (`primary_start_timeout`), and the
//! timeline rule of the leader race (`check_timeline`).
//!
//! Upstream: with primary_start_timeout 0 the leader whose PostgreSQL died hands over at
//! once when a healthy replica can take over, instead of restarting in place. Otherwise it
//! restarts its primary and waits that long for the start it began; after that, if a
//! replica can take over, it stops PostgreSQL and releases the key. Only a start the
//! daemon began counts: a primary that merely refuses connections (crash recovery after a
//! backend crash, started by somebody else) is left alone.

use super::{Action, Decision, Memory, Observation, decision};
use crate::dcs::{Cluster, PgState, Role};
use crate::postgres::types::StopMode;

/// Upstream's message after the handover of a crashed primary.
pub const FAILED_OVER_AFTER_CRASH: &str = "stopped PostgreSQL to fail over after a crash";
/// Upstream's message after the start of the primary took longer than allowed.
pub const FAILED_OVER_AFTER_START_TIMEOUT: &str = "stopped PostgreSQL because of startup timeout";

/// `Some(reason)` when `timeline` is older than the cluster's (last entry of `history` + 1)
/// and check_timeline is on; `None` when the rule is off or the timeline is current.
pub fn timeline_behind(
    obs: &Observation,
    cluster: &Cluster,
    timeline: Option<u32>,
) -> Option<String> {
    if !obs.config.lifecycle.check_timeline || obs.config.standby_cluster.is_some() {
        return None;
    }
    let cluster_tl = cluster.timeline()?;
    match timeline {
        None => Some("can not figure out the timeline".into()),
        Some(t) if t < cluster_tl => Some(format!(
            "timeline {t} is behind last known cluster timeline {cluster_tl}"
        )),
        Some(_) => None,
    }
}

/// Upstream's `is_failover_possible`: some other member answered, runs as a replica, may
/// be promoted, is not lagging more than maximum_lag_on_failover behind the last known
/// leader position and (with check_timeline) is on the cluster's timeline.
pub fn failover_possible(obs: &Observation, cluster: &Cluster) -> bool {
    let me = obs.config.name.as_str();
    let sync_gated =
        obs.config.sync.enabled() && cluster.sync.as_ref().is_some_and(|s| s.leader.is_some());
    obs.peers.iter().any(|p| {
        let Some(r) = &p.reply else { return false };
        let lag = cluster
            .status
            .optime
            .unwrap_or(0)
            .saturating_sub(r.wal_position);
        p.name != me
            && !r.is_primary
            && !r.nofailover
            && !r.watchdog_failed
            && lag <= obs.config.maximum_lag_on_failover
            && (!sync_gated || super::sync::is_sync_member(cluster, &p.name))
            && timeline_behind(obs, cluster, r.timeline).is_none()
    })
}

/// Peers' statuses are needed: we lead, PostgreSQL is down or still starting after a
/// start we began, and the timeout says a handover may be due.
pub fn needs_peers(obs: &Observation, mem: &Memory) -> bool {
    if obs.config.paused || obs.pg.is_healthy() {
        return false;
    }
    let timeout = obs.config.lifecycle.primary_start_timeout;
    let immediate = timeout == 0 && !obs.pg.is_running();
    immediate || start_timed_out(obs, mem)
}

/// The start we began as the leader has taken primary_start_timeout or longer.
pub fn start_timed_out(obs: &Observation, mem: &Memory) -> bool {
    let timeout_ms = obs.config.lifecycle.primary_start_timeout * 1000;
    mem.primary_start_since_ms
        .is_some_and(|since| obs.now_ms.saturating_sub(since) >= timeout_ms)
}

/// Seconds left of primary_start_timeout for the start we began.
fn seconds_left(obs: &Observation, mem: &Memory) -> u64 {
    let since = mem.primary_start_since_ms.unwrap_or(obs.now_ms);
    let timeout_ms = obs.config.lifecycle.primary_start_timeout * 1000;
    (since + timeout_ms)
        .saturating_sub(obs.now_ms)
        .div_ceil(1000)
}

/// Release the key so a healthy replica takes over: PostgreSQL is stopped (immediate)
/// and any start still running is cancelled. We then wait for the new leader as after a
/// switchover, and rejoin it (pg_rewind if needed).
fn hand_over(obs: &Observation, mem: &mut Memory, message: &str, cancel_job: bool) -> Decision {
    mem.primary_start_since_ms = None;
    mem.demoted_for_switchover_ms = Some(obs.now_ms);
    mem.divergence = None;
    let mut actions = vec![];
    if cancel_job {
        actions.push(Action::CancelJob);
    }
    if obs.pg.is_running() || cancel_job {
        actions.push(Action::Stop {
            mode: StopMode::Immediate,
        });
    }
    actions.push(Action::ReleaseLock);
    decision(
        obs,
        message.into(),
        actions,
        Role::Demoted,
        PgState::Stopped,
    )
}

/// Leader, PostgreSQL not running, data of a primary: hand over instead of restarting
/// when the timeout says so and a replica can take over. `None`: restart in place.
pub fn crashed_leader(obs: &Observation, cluster: &Cluster, mem: &mut Memory) -> Option<Decision> {
    let immediate = obs.config.lifecycle.primary_start_timeout == 0;
    if !(immediate || start_timed_out(obs, mem)) || !failover_possible(obs, cluster) {
        return None;
    }
    let msg = if immediate {
        FAILED_OVER_AFTER_CRASH
    } else {
        FAILED_OVER_AFTER_START_TIMEOUT
    };
    Some(hand_over(obs, mem, msg, false))
}

/// Leader while the primary we started is starting up (the start job still runs, or it
/// returned and PostgreSQL does not accept connections yet). `Err(message)` to keep
/// waiting with that message; `Ok(decision)` to hand over.
pub fn starting_leader(
    obs: &Observation,
    cluster: &Cluster,
    mem: &mut Memory,
    job_running: bool,
) -> Result<Decision, String> {
    if mem.primary_start_since_ms.is_none() || obs.config.paused {
        return Err(String::new());
    }
    if !start_timed_out(obs, mem) {
        return Err(format!(
            "PostgreSQL is still starting up, {} seconds until timeout",
            seconds_left(obs, mem)
        ));
    }
    if !failover_possible(obs, cluster) {
        return Err(
            "primary start has timed out, but continuing to wait because failover is not possible"
                .into(),
        );
    }
    Ok(hand_over(
        obs,
        mem,
        FAILED_OVER_AFTER_START_TIMEOUT,
        job_running,
    ))
}
