//! THE PURE CORE: `decide(&Observation, &mut Memory) -> Decision`. No tokio, no sockets,
//! no files, no clock reads: everything comes in through the observation, and every side
//! effect goes out as an `Action`.

pub mod action;
mod bootstrap;
pub mod cascade;
pub mod crash;
mod election;
pub mod failsafe;
mod leader;
pub mod member;
pub mod memory;
pub mod observation;
mod replica;
pub mod slots;
pub mod standby;
pub mod switchover;
pub mod sync;

pub use action::{Action, Branch, Decision};
pub use failsafe::{FailsafeAnswer, FailsafeContact, FailsafeInput, FailsafeRound};
pub use memory::Memory;
pub use observation::*;

/// The runtime asks peers for their /patroni only when a decision needs them: an election,
/// a switchover the leader checks, or a crashed primary that may hand over.
pub fn needs_peers(obs: &Observation, mem: &Memory) -> bool {
    let leading =
        matches!(&obs.dcs, DcsView::Ok(c) if c.leader_name() == Some(obs.config.name.as_str()));
    election::needs_peers(obs) || (leading && crash::needs_peers(obs, mem))
}

use crate::dcs::{Cluster, PgState, Role};
use crate::postgres::types::{DataDirState, PgObservation, StopMode, UpstreamConn};

/// One HA cycle's decision.
pub fn decide(obs: &Observation, mem: &mut Memory) -> Decision {
    let d = match &obs.dcs {
        DcsView::Unreachable(err) => dcs_unreachable(obs, mem, err),
        DcsView::Ok(cluster) => decide_with_cluster(obs, cluster, mem),
    };
    mem.last_role = d.role;
    d
}

fn decide_with_cluster(obs: &Observation, cluster: &Cluster, mem: &mut Memory) -> Decision {
    let i_am_leader = cluster.leader_name() == Some(obs.config.name.as_str());
    mem.has_lock = i_am_leader;
    if !i_am_leader {
        // Retention timers belong to the leader; a new leader seeds them from `status`.
        mem.retain_slots = None;
        mem.primary_start_since_ms = None;
    }
    match &obs.job {
        JobState::Running(job) => return job_running(obs, cluster, mem, job, i_am_leader),
        JobState::Finished(job, outcome) => {
            if let Some(d) = bootstrap::job_finished(obs, cluster, mem, job, outcome) {
                return d;
            }
        }
        JobState::Idle => {}
    }
    match &obs.pg.data_dir {
        DataDirState::Empty if !obs.pg.is_running() => bootstrap::empty_data_dir(obs, cluster, mem),
        DataDirState::Invalid(why) => decision(
            obs,
            format!("data directory is not usable ({why}); not touching it"),
            vec![],
            Role::Uninitialized,
            PgState::Stopped,
        ),
        _ => {
            if let Some(d) = bootstrap::check_sysid(obs, cluster) {
                return d;
            }
            if !obs.pg.is_running() {
                mem.unhealthy_since_ms = None;
                return replica::not_running(obs, cluster, mem);
            }
            if !obs.pg.is_healthy() {
                return not_accepting_connections(obs, cluster, mem, i_am_leader);
            }
            mem.unhealthy_since_ms = None;
            mem.primary_start_since_ms = None;
            if cluster.is_unlocked() {
                if let Some(d) = failsafe::blocks_race(obs, cluster) {
                    return d;
                }
                election::unlocked(obs, cluster, mem)
            } else if i_am_leader {
                leader::has_lock(obs, cluster, mem)
            } else {
                replica::follow_leader(obs, cluster, mem)
            }
        }
    }
}

/// Upstream: after the DCS read failed (its retries took up to retry_timeout), a primary
/// demotes at once: it can no longer prove it holds the leader key.
fn dcs_unreachable(obs: &Observation, mem: &mut Memory, err: &str) -> Decision {
    let running_primary = obs.pg.sql.as_ref().is_some_and(|s| !s.in_recovery);
    let was_leader = mem.has_lock;
    mem.has_lock = false;
    if obs.config.paused {
        let mut d = decision(
            obs,
            format!("PAUSE: DCS is not accessible ({err}); not demoting while paused"),
            vec![],
            current_role(&obs.pg, mem),
            observed_state(obs),
        );
        d.touch_member = false;
        return d;
    }
    if running_primary && obs.config.failsafe_mode {
        return failsafe::primary_without_dcs(obs, mem, err);
    }
    if running_primary || (was_leader && obs.pg.is_running()) {
        let mut d = decision(
            obs,
            format!("demoting self because DCS is not accessible and I was a leader ({err})"),
            vec![Action::Stop {
                mode: StopMode::Immediate,
            }],
            Role::Demoted,
            PgState::Stopping,
        );
        d.touch_member = false;
        return d;
    }
    let role = current_role(&obs.pg, mem);
    let mut d = decision(
        obs,
        format!("DCS is not accessible ({err}); waiting"),
        vec![],
        role,
        observed_state(obs),
    );
    d.touch_member = false;
    d
}

fn job_running(
    obs: &Observation,
    cluster: &Cluster,
    mem: &mut Memory,
    job: &Job,
    i_am_leader: bool,
) -> Decision {
    let state = match job {
        Job::Bootstrap => PgState::InitializingNewCluster,
        Job::Basebackup { .. } | Job::CloneWithoutLeader => PgState::CreatingReplica,
        Job::Rewind { .. } | Job::CheckDivergence { .. } => PgState::Rewinding,
        Job::Start { .. } => PgState::Starting,
        Job::Restart { .. } => PgState::Restarting,
        Job::Reinitialize { .. } => PgState::CreatingReplica,
    };
    let role = match (job, i_am_leader) {
        (Job::Bootstrap | Job::Basebackup { .. } | Job::CloneWithoutLeader, _)
        | (Job::Reinitialize { .. }, _) => Role::Uninitialized,
        (_, true) => Role::Primary,
        _ => Role::Replica,
    };
    let what = job.describe();
    if i_am_leader {
        let mut held_msg = format!("updated leader lock during {what}");
        if let Job::Start {
            role: crate::postgres::types::ConfigRole::Primary,
        } = job
        {
            match crash::starting_leader(obs, cluster, mem, true) {
                Ok(d) => return d,
                Err(m) if !m.is_empty() => held_msg = m,
                Err(_) => {}
            }
        }
        let lost = Branch::new(format!("lost the leader lock during {what}"), vec![])
            .with_role(Role::Demoted);
        let held = Branch::new(held_msg, vec![]);
        decision(
            obs,
            String::new(),
            vec![Action::UpdateLock { held, lost }],
            role,
            state,
        )
    } else {
        decision(obs, format!("{what} in progress"), vec![], role, state)
    }
}

/// Postmaster alive but not accepting connections: starting up or in crash recovery.
fn not_accepting_connections(
    obs: &Observation,
    cluster: &Cluster,
    mem: &mut Memory,
    i_am_leader: bool,
) -> Decision {
    mem.unhealthy_since_ms.get_or_insert(obs.now_ms);
    let mut msg = format!(
        "postgres is running but not accepting connections yet ({})",
        obs.pg.sql_error.as_deref().unwrap_or("starting")
    );
    if i_am_leader {
        match crash::starting_leader(obs, cluster, mem, false) {
            Ok(d) => return d,
            Err(m) if !m.is_empty() => msg = m,
            Err(_) => {}
        }
        let stop = if obs.config.paused {
            vec![]
        } else {
            vec![Action::Stop {
                mode: StopMode::Immediate,
            }]
        };
        let lost = Branch::new("lost the leader lock while PostgreSQL was starting", stop)
            .with_role(Role::Demoted);
        let held = Branch::new(msg, vec![]);
        return decision(
            obs,
            String::new(),
            vec![Action::UpdateLock { held, lost }],
            Role::Primary,
            PgState::Starting,
        );
    }
    decision(
        obs,
        msg,
        vec![],
        current_role(&obs.pg, mem),
        PgState::Starting,
    )
}

pub(crate) fn decision(
    _obs: &Observation,
    message: String,
    actions: Vec<Action>,
    role: Role,
    state: PgState,
) -> Decision {
    Decision {
        actions,
        message,
        role,
        state,
        touch_member: true,
        recheck_ms: None,
        status_slots: None,
    }
}

/// Role as PostgreSQL itself reports it; the last known role while it is down.
pub(crate) fn current_role(pg: &PgObservation, mem: &Memory) -> Role {
    match &pg.sql {
        Some(s) if s.in_recovery => Role::Replica,
        Some(_) => Role::Primary,
        None if matches!(pg.data_dir, DataDirState::Empty) => Role::Uninitialized,
        None => mem.last_role,
    }
}

pub fn observed_state(obs: &Observation) -> PgState {
    if obs.pg.is_healthy() {
        PgState::Running
    } else if obs.pg.is_running() {
        PgState::Starting
    } else {
        PgState::Stopped
    }
}

/// How to reach a member's PostgreSQL, from its `conn_url`.
pub fn upstream_of(cluster: &Cluster, name: &str) -> Option<UpstreamConn> {
    let m = cluster.member(name)?;
    let url = m.data.conn_url.as_deref()?;
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let hostport = rest.split(['/', '?']).next()?;
    let hostport = hostport
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or(hostport);
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h.trim_matches(['[', ']']).to_string(), p.parse().ok()?),
        None => (hostport.to_string(), 5432),
    };
    Some(UpstreamConn {
        host,
        port,
        member: name.to_string(),
    })
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_failsafe;
#[cfg(test)]
mod tests_lifecycle;
#[cfg(test)]
mod tests_slots;
#[cfg(test)]
mod tests_standby;
#[cfg(test)]
mod tests_timeouts;
