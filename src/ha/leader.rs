//! We hold the leader key and PostgreSQL accepts connections.

use super::switchover::{self, LeaderStep};
use super::{Action, Branch, Decision, Memory, Observation, decision, slots};
use crate::dcs::{Cluster, PgState, Role};
use crate::postgres::types::StopMode;

pub(super) fn has_lock(obs: &Observation, cluster: &Cluster, mem: &mut Memory) -> Decision {
    let me = obs.config.name.as_str();
    let sql = obs.pg.sql.as_ref().expect("healthy");
    if let Some(sc) = super::standby::remote(obs) {
        return super::standby::leader_cycle(obs, cluster, mem, sc, sql);
    }
    let step = switchover::pending(cluster)
        .filter(|_| !sql.in_recovery)
        .map(|f| (f.version, switchover::leader_step(obs, cluster, f)));
    if let Some((_, LeaderStep::Demote(msg))) = &step {
        mem.demoted_for_switchover_ms = Some(obs.now_ms);
        return decision(
            obs,
            msg.clone(),
            vec![Action::GracefulDemote],
            Role::Demoted,
            PgState::Stopping,
        );
    }
    let mut held_actions = vec![];
    let mut recheck = false;
    let held_msg = if sql.in_recovery {
        held_actions.extend(super::sync::on_promote(obs, cluster));
        held_actions.push(Action::Promote);
        mem.divergence = None;
        "promoted self to leader because I had the session lock".to_string()
    } else {
        format!("no action. I am ({me}), the leader with the lock")
    };
    let mut switchover_soon = None;
    let held_msg = match &step {
        Some((_, LeaderStep::Wait(m, soon))) => {
            switchover_soon = *soon;
            format!("{held_msg}; {m}")
        }
        Some((version, LeaderStep::Clear(m))) => {
            held_actions.push(Action::ClearFailover { version: *version });
            format!("{held_msg}; {m}")
        }
        _ => held_msg,
    };
    let mut status_slots = None;
    if !sql.in_recovery {
        let retain = slots::update_retention(obs, cluster, mem);
        held_actions.extend(primary_housekeeping_with(obs, cluster, &retain));
        status_slots = Some(slots::leader_status(obs, cluster, sql, retain));
        let (sync_actions, soon) = super::sync::leader_actions(obs, cluster);
        held_actions.extend(sync_actions);
        recheck = soon;
    }
    let held = Branch::new(held_msg, held_actions).with_role(Role::Primary);
    let lost = if obs.config.paused {
        Branch::new(
            "PAUSE: continue to run as primary after failing to update leader lock in DCS",
            vec![],
        )
    } else {
        Branch::new(
            "demoting self because failed to update leader lock in DCS",
            vec![Action::Stop {
                mode: StopMode::Immediate,
            }],
        )
        .with_role(Role::Demoted)
    };
    let mut d = decision(
        obs,
        String::new(),
        vec![Action::UpdateLock { held, lost }],
        Role::Primary,
        PgState::Running,
    );
    // PostgreSQL reports a new synchronous standby within moments of the reload.
    d.recheck_ms = [recheck.then_some(300), switchover_soon]
        .into_iter()
        .flatten()
        .min();
    d.status_slots = status_slots;
    d
}

/// What a running primary with the lock keeps in order each cycle: history after a
/// promotion, slots for members, a stale failover key.
pub(super) fn primary_housekeeping(obs: &Observation, cluster: &Cluster) -> Vec<Action> {
    primary_housekeeping_with(obs, cluster, &cluster.status.retain_slots)
}

/// `primary_housekeeping` with the member slots retained this cycle.
pub(super) fn primary_housekeeping_with(
    obs: &Observation,
    cluster: &Cluster,
    retain: &[String],
) -> Vec<Action> {
    let mut out = vec![];
    let Some(sql) = &obs.pg.sql else { return out };
    let recorded = cluster
        .history
        .as_ref()
        .and_then(|h| h.lines.iter().map(|l| l.timeline).max());
    let needs_history = match recorded {
        Some(t) => t + 1 < sql.timeline,
        None => sql.timeline > 1,
    };
    if needs_history && !sql.in_recovery {
        out.push(Action::UpdateHistory {
            current: cluster.history.clone(),
            timeline: sql.timeline,
        });
    }
    if obs.config.use_slots {
        out.extend(slots::slot_actions(obs, cluster, sql, retain));
    }
    out.extend(super::failsafe::leader_actions(obs, cluster));
    out
}
