//! A node that is not (or should not be) the primary: start, rewind, follow.

use super::{
    Action, Branch, Decision, Divergence, Job, Memory, Observation, cascade, decision, slots,
    upstream_of,
};
use crate::dcs::{Cluster, PgState, Role};
use crate::postgres::types::{ConfigRole, ControlData, DataDirState, StopMode, UpstreamConn};

/// PostgreSQL is not running and the data directory is initialised.
pub(super) fn not_running(obs: &Observation, cluster: &Cluster, mem: &mut Memory) -> Decision {
    let me = obs.config.name.as_str();
    let control = match &obs.pg.data_dir {
        DataDirState::Initialized(c) => c.clone(),
        _ => ControlData::default(),
    };
    if obs.config.paused {
        return paused_not_running(obs, cluster);
    }
    if cluster.leader_name().is_some() {
        mem.demoted_for_switchover_ms = None;
    } else if let Some(at) = mem.demoted_for_switchover_ms {
        // We handed over: the candidate is about to take the key; starting now on our own
        // would only race it.
        if obs.now_ms.saturating_sub(at) < obs.config.ttl * 1000 {
            let mut d = decision(
                obs,
                "demoted for a switchover; waiting for the new leader".into(),
                vec![],
                Role::Replica,
                PgState::Stopped,
            );
            d.recheck_ms = Some(200);
            return d;
        }
        mem.demoted_for_switchover_ms = None;
    }
    match cluster.leader_name() {
        Some(leader) if leader == me && super::standby::remote(obs).is_some() => {
            // A former primary (demote-cluster) is checked against the remote first.
            let sc = super::standby::remote(obs).expect("checked");
            super::standby::start_standby_leader(obs, mem, sc, was_primary(&control))
        }
        Some(leader) if leader == me => {
            if was_primary(&control) {
                // primary_start_timeout 0 (or a start of ours that took too long): a
                // healthy replica takes over instead.
                if let Some(d) = super::crash::crashed_leader(obs, cluster, mem) {
                    return d;
                }
                // Restart in place, counting primary_start_timeout from this start.
                mem.primary_start_since_ms.get_or_insert(obs.now_ms);
                let held = Branch::new(
                    "starting primary after failure",
                    vec![Action::StartJob(Job::Start {
                        role: ConfigRole::Primary,
                    })],
                );
                let lost = Branch::new("lost the leader lock while PostgreSQL was down", vec![]);
                return decision(
                    obs,
                    String::new(),
                    vec![Action::UpdateLock { held, lost }],
                    Role::Primary,
                    PgState::Stopped,
                );
            }
            // A standby's data dir under our lock: do not promote blindly, let others race.
            decision(
                obs,
                "releasing the leader key: PostgreSQL is down and its data is a standby's".into(),
                vec![Action::ReleaseLock],
                Role::Replica,
                PgState::Stopped,
            )
        }
        Some(leader) => match upstream_of(cluster, leader) {
            Some(up) => start_following(obs, cluster, mem, &control, up),
            None => start_standby(
                obs,
                cluster,
                None,
                format!("starting as a secondary; leader '{leader}' has no address yet"),
            ),
        },
        None => start_standby(
            obs,
            cluster,
            None,
            "starting as a secondary (the cluster has no leader)".into(),
        ),
    }
}

/// Paused: PostgreSQL is not started automatically; a leader without a running server
/// gives up the key (as upstream) so an operator-started node can take it.
fn paused_not_running(obs: &Observation, cluster: &Cluster) -> Decision {
    let me = obs.config.name.as_str();
    if cluster.leader_name() == Some(me) {
        return decision(
            obs,
            "PAUSE: removed leader lock because postgres is not running".into(),
            vec![Action::ReleaseLock],
            Role::Replica,
            PgState::Stopped,
        );
    }
    decision(
        obs,
        "PAUSE: postgres is not running".into(),
        vec![],
        obs_role(obs),
        PgState::Stopped,
    )
}

fn obs_role(obs: &Observation) -> Role {
    match &obs.pg.data_dir {
        DataDirState::Empty => Role::Uninitialized,
        _ => Role::Replica,
    }
}

fn was_primary(c: &ControlData) -> bool {
    matches!(c.cluster_state.as_str(), "in production" | "shut down")
}

/// Decide between starting right away, checking divergence, rewinding, or re-cloning.
fn start_following(
    obs: &Observation,
    cluster: &Cluster,
    mem: &mut Memory,
    control: &ControlData,
    up: UpstreamConn,
) -> Decision {
    let leader_tl = cluster
        .member(&up.member)
        .and_then(|m| m.data.timeline)
        .or(cluster.timeline());
    let may_have_diverged = was_primary(control) || leader_tl.is_some_and(|t| t > control.timeline);
    if !may_have_diverged {
        let src = cascade::stream_source(obs, cluster, &up.member);
        return start_standby(obs, cluster, src, "starting as a secondary".into());
    }
    if let Some(d) = leader_not_promoted_yet(obs, cluster, &up) {
        return d;
    }
    let checked = mem.divergence_from(&up);
    let job_decision = |job, msg: String| {
        decision(
            obs,
            msg,
            vec![Action::StartJob(job)],
            Role::Replica,
            PgState::Stopped,
        )
    };
    match checked {
        None => job_decision(
            Job::CheckDivergence { from: up.clone() },
            format!(
                "checking whether my timeline diverged from leader '{}'",
                up.member
            ),
        ),
        Some(Divergence::NotDiverged) => {
            let src = cascade::stream_source(obs, cluster, &up.member);
            start_standby(obs, cluster, src, "starting as a secondary".into())
        }
        Some(Divergence::Diverged(why)) if obs.config.use_pg_rewind && !mem.rewind_failed => {
            job_decision(
                Job::Rewind { from: up.clone() },
                format!("running pg_rewind from '{}' ({why})", up.member),
            )
        }
        Some(Divergence::Diverged(why))
            if obs.config.remove_data_directory_on_diverged_timelines =>
        {
            mem.reset_rewind_state();
            decision(
                obs,
                format!(
                    "removing the data directory: it diverged from the leader ({why}) and pg_rewind is not possible"
                ),
                vec![Action::RemoveDataDir],
                Role::Replica,
                PgState::Stopped,
            )
        }
        Some(Divergence::Diverged(why)) => decision(
            obs,
            format!(
                "my timeline diverged from leader '{}' ({why}); not starting (enable use_pg_rewind or \
                 remove_data_directory_on_diverged_timelines)",
                up.member
            ),
            vec![],
            Role::Replica,
            PgState::Stopped,
        ),
        Some(Divergence::Unknown(why)) => {
            mem.divergence = None;
            decision(
                obs,
                format!("could not check timeline divergence ({why}); will retry"),
                vec![],
                Role::Replica,
                PgState::Stopped,
            )
        }
    }
}

/// A leader that holds the key but still runs as a replica (a switchover candidate
/// promoting) is on the old timeline: a divergence check now would find none and its
/// answer would be stale once the promotion forks the timeline. Wait, as upstream does,
/// until its member key says primary.
fn leader_not_promoted_yet(
    obs: &Observation,
    cluster: &Cluster,
    up: &UpstreamConn,
) -> Option<Decision> {
    let role = cluster.member(&up.member)?.data.role;
    if !matches!(role, Role::Replica | Role::Demoted | Role::Promoted) {
        return None;
    }
    Some(decision(
        obs,
        format!(
            "waiting for leader '{}' to finish its promotion before checking whether my timeline diverged",
            up.member
        ),
        vec![],
        Role::Replica,
        PgState::Stopped,
    ))
}

fn start_standby(
    obs: &Observation,
    cluster: &Cluster,
    up: Option<UpstreamConn>,
    msg: String,
) -> Decision {
    // A slot is kept for us by the leader only; a cascading source has none for us.
    let slot_name = up
        .as_ref()
        .filter(|u| obs.config.use_slots && cascade::streams_from_leader(u, cluster))
        .map(|_| slots::slot_name(&obs.config.name));
    let role = ConfigRole::Standby {
        upstream: up,
        slot_name,
    };
    decision(
        obs,
        msg,
        vec![Action::StartJob(Job::Start { role })],
        Role::Replica,
        PgState::Starting,
    )
}

/// Healthy PostgreSQL, somebody else holds the lock.
pub(super) fn follow_leader(obs: &Observation, cluster: &Cluster, mem: &mut Memory) -> Decision {
    let me = obs.config.name.as_str();
    let leader = cluster.leader_name().unwrap_or_default().to_string();
    let sql = obs.pg.sql.as_ref().expect("healthy");
    if obs.config.paused {
        let what = if sql.in_recovery {
            "a secondary"
        } else {
            "a primary without the leader lock"
        };
        let role = if sql.in_recovery {
            Role::Replica
        } else {
            Role::Primary
        };
        return decision(
            obs,
            format!("PAUSE: no action. I am ({me}), {what} (leader is '{leader}')"),
            vec![],
            role,
            PgState::Running,
        );
    }
    if !sql.in_recovery {
        // Two primaries must never both accept writes: stop now, rejoin next cycle.
        mem.divergence = None;
        return decision(
            obs,
            format!(
                "demoting self because I do not have the lock and I was a leader (leader is '{leader}')"
            ),
            vec![Action::Stop {
                mode: StopMode::Fast,
            }],
            Role::Demoted,
            PgState::Stopping,
        );
    }
    let up = cascade::stream_source(obs, cluster, &leader);
    if let Some(d) = diverged_replica(obs, cluster, mem, sql, &leader, up.as_ref()) {
        return d;
    }
    let target = up.as_ref().map(|u| (u.host.clone(), u.port));
    let mut actions = vec![];
    if up.is_some() && obs.pg.configured_primary != target {
        actions.push(Action::Follow {
            upstream: up.clone(),
        });
    }
    let idle = actions.is_empty();
    if let Some(up) = up.as_ref().filter(|_| idle) {
        actions.extend(slots::replica_actions(obs, cluster, up));
    }
    let msg = if idle {
        format!("no action. I am ({me}), a secondary, and following a leader ({leader})")
    } else {
        match &up {
            Some(u) if u.member != leader => {
                format!(
                    "following '{}' (replicatefrom) instead of leader '{leader}'",
                    u.member
                )
            }
            _ => format!("following new leader '{leader}'"),
        }
    };
    decision(obs, msg, actions, Role::Replica, PgState::Running)
}

/// A running replica that does not stream from a leader on a newer timeline may have
/// received WAL past the point where the leader's timeline forked off (an asynchronous
/// replica of the old primary, or one that kept streaming from a frozen primary). It can
/// never follow then: check, and if diverged stop so the not-running path rewinds it.
fn diverged_replica(
    obs: &Observation,
    cluster: &Cluster,
    mem: &mut Memory,
    sql: &crate::postgres::types::SqlObservation,
    leader: &str,
    up: Option<&UpstreamConn>,
) -> Option<Decision> {
    let up = up?;
    let streaming = sql
        .wal_receiver
        .as_ref()
        .is_some_and(|w| w.status == "streaming");
    let leader_tl = cluster
        .member(leader)
        .and_then(|m| m.data.timeline)
        .or(cluster.timeline())?;
    if streaming || leader_tl <= sql.timeline {
        return None;
    }
    let checked = mem
        .divergence
        .as_ref()
        .filter(|(u, _)| u == up)
        .map(|(_, d)| d.clone());
    match checked {
        None => Some(decision(
            obs,
            format!(
                "not streaming from leader '{leader}' (timeline {leader_tl} > my {}); checking whether my timeline diverged",
                sql.timeline
            ),
            vec![Action::StartJob(Job::CheckDivergence { from: up.clone() })],
            Role::Replica,
            PgState::Running,
        )),
        Some(Divergence::Diverged(why)) => Some(decision(
            obs,
            format!("stopping to rejoin leader '{leader}': my timeline diverged ({why})"),
            vec![Action::Stop {
                mode: StopMode::Fast,
            }],
            Role::Replica,
            PgState::Stopping,
        )),
        Some(Divergence::Unknown(_)) => {
            mem.divergence = None;
            None
        }
        Some(Divergence::NotDiverged) => None,
    }
}
