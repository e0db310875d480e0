//! We hold the leader key and PostgreSQL accepts connections.

use super::{Action, Branch, Decision, Memory, Observation, decision, slots};
use crate::dcs::{Cluster, PgState, Role};
use crate::postgres::types::StopMode;

pub(super) fn has_lock(obs: &Observation, cluster: &Cluster, mem: &mut Memory) -> Decision {
    let me = obs.config.name.as_str();
    let sql = obs.pg.sql.as_ref().expect("healthy");
    let mut held_actions = vec![];
    let held_msg = if sql.in_recovery {
        held_actions.push(Action::Promote);
        mem.divergence = None;
        "promoted self to leader because I had the session lock".to_string()
    } else {
        format!("no action. I am ({me}), the leader with the lock")
    };
    if !sql.in_recovery {
        held_actions.extend(primary_housekeeping(obs, cluster));
    }
    let held = Branch::new(held_msg, held_actions).with_role(Role::Primary);
    let lost = Branch::new(
        "demoting self because failed to update leader lock in DCS",
        vec![Action::Stop {
            mode: StopMode::Immediate,
        }],
    )
    .with_role(Role::Demoted);
    decision(
        obs,
        String::new(),
        vec![Action::UpdateLock { held, lost }],
        Role::Primary,
        PgState::Running,
    )
}

/// What a running primary with the lock keeps in order each cycle: history after a
/// promotion, slots for members, a stale failover key.
pub(super) fn primary_housekeeping(obs: &Observation, cluster: &Cluster) -> Vec<Action> {
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
    if needs_history {
        out.push(Action::UpdateHistory {
            current: cluster.history.clone(),
            timeline: sql.timeline,
        });
    }
    if obs.config.use_slots {
        out.extend(slots::slot_actions(&obs.config.name, cluster, sql));
    }
    if let Some(f) = &cluster.failover
        && f.scheduled_at.is_none()
        && f.member.as_deref() == Some(obs.config.name.as_str())
    {
        out.push(Action::ClearFailover { version: f.version });
    }
    out
}
