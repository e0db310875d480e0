//! Empty data directory, the bootstrap race, and what to do when a background job ends.

use super::{Action, Branch, Decision, Divergence, Job, JobOutcome, Memory, Observation, decision};
use crate::dcs::{Cluster, PgState, Role};
use crate::postgres::types::{ConfigRole, REMOTE_PRIMARY, StopMode};

pub(super) fn empty_data_dir(obs: &Observation, cluster: &Cluster, mem: &mut Memory) -> Decision {
    mem.reset_rewind_state();
    let me = obs.config.name.as_str();
    let uninit =
        |msg: String, actions| decision(obs, msg, actions, Role::Uninitialized, PgState::Stopped);
    match cluster.leader_name() {
        Some(leader) if leader != me => match super::cascade::clone_source(obs, cluster, leader) {
            Some(from) if from.member != leader => uninit(
                format!(
                    "trying to bootstrap from replica '{}' (clonefrom)",
                    from.member
                ),
                vec![Action::StartJob(Job::Basebackup { from })],
            ),
            Some(from) => uninit(
                format!("trying to bootstrap from leader '{leader}'"),
                vec![Action::StartJob(Job::Basebackup { from })],
            ),
            None => uninit(
                format!("waiting for leader '{leader}' to publish its connection address"),
                vec![],
            ),
        },
        // We hold the key but have no data: give it up so a node with data can lead.
        Some(_) => uninit(
            "releasing the leader key: my data directory is empty".into(),
            vec![Action::ReleaseLock],
        ),
        None if cluster.initialize.is_none() && super::standby::remote(obs).is_some() => {
            let sc = super::standby::remote(obs).expect("checked");
            let won = super::standby::bootstrap_branch(sc, me);
            let lost = Branch::new(
                "waiting for the standby leader to bootstrap (lost the initialize race)",
                vec![],
            );
            uninit(String::new(), vec![Action::RaceInitialize { won, lost }])
        }
        None if cluster.initialize.is_none() => {
            let won = Branch::new(
                format!("trying to bootstrap a new cluster ({me} won the initialize race)"),
                vec![Action::StartJob(Job::Bootstrap)],
            );
            let lost = Branch::new(
                "waiting for leader to bootstrap (lost the initialize race)",
                vec![],
            );
            uninit(String::new(), vec![Action::RaceInitialize { won, lost }])
        }
        // Upstream: a `no_leader` replica method may restore a formerly running cluster
        // from a backup, unless a bootstrap is under way (initialize is still empty).
        None if obs.config.clone_without_leader
            && cluster.initialize.as_deref().is_some_and(|s| !s.is_empty()) =>
        {
            uninit(
                "trying to bootstrap (without leader)".into(),
                vec![Action::StartJob(Job::CloneWithoutLeader)],
            )
        }
        None => uninit("waiting for leader to bootstrap".into(), vec![]),
    }
}

/// A data directory from another cluster must never join this one.
pub(super) fn check_sysid(obs: &Observation, cluster: &Cluster) -> Option<Decision> {
    let ours = obs.pg.system_identifier()?;
    let theirs = cluster.initialize.as_deref().filter(|s| !s.is_empty())?;
    (ours != theirs).then(|| {
        let mut d = decision(
            obs,
            format!(
                "data directory belongs to a different cluster (system identifier {ours}, cluster has {theirs}); \
                 refusing to touch it"
            ),
            vec![],
            Role::Uninitialized,
            super::observed_state(obs),
        );
        d.touch_member = false;
        d
    })
}

/// Handle the outcome of a job that finished since the last cycle. `None`: carry on with
/// the normal decision flow.
pub(super) fn job_finished(
    obs: &Observation,
    cluster: &Cluster,
    mem: &mut Memory,
    job: &Job,
    outcome: &JobOutcome,
) -> Option<Decision> {
    let me = obs.config.name.clone();
    match (job, outcome) {
        (Job::Bootstrap, JobOutcome::Ok) => {
            let sysid = obs.pg.system_identifier().unwrap_or_default().to_string();
            let won = Branch::new(
                format!("initialized a new cluster; {me} is the leader"),
                vec![],
            )
            .with_role(Role::Primary);
            let lost = Branch::new(
                "bootstrapped a cluster but somebody else holds the leader key; stopping",
                vec![Action::Stop {
                    mode: StopMode::Fast,
                }],
            )
            .with_role(Role::Demoted);
            let actions = vec![
                Action::SetInitialize { sysid },
                Action::WriteBootstrapConfig,
                Action::AcquireLock { won, lost },
            ];
            Some(decision(
                obs,
                String::new(),
                actions,
                Role::Primary,
                PgState::Running,
            ))
        }
        (Job::Bootstrap, other) => {
            let e = match other {
                JobOutcome::Failed(e) => e.clone(),
                o => format!("{o:?}"),
            };
            Some(decision(
                obs,
                format!(
                    "bootstrap failed ({e}); removing the initialize key and the data directory"
                ),
                vec![
                    Action::Stop {
                        mode: StopMode::Immediate,
                    },
                    Action::RemoveDataDir,
                    Action::CancelInitialize,
                ],
                Role::Uninitialized,
                PgState::InitdbFailed,
            ))
        }
        (Job::Basebackup { from }, JobOutcome::Failed(e)) if from.member == REMOTE_PRIMARY => {
            Some(decision(
                obs,
                format!(
                    "failed to clone the remote primary ({e}); removing the initialize key to retry"
                ),
                vec![Action::RemoveDataDir, Action::CancelInitialize],
                Role::Uninitialized,
                PgState::Stopped,
            ))
        }
        (Job::Basebackup { from }, JobOutcome::Ok)
            if from.member == REMOTE_PRIMARY && cluster.leader_name().is_none() =>
        {
            mem.reset_rewind_state();
            let sc = super::standby::remote(obs).cloned().unwrap_or_default();
            Some(super::standby::bootstrap_finished(obs, &sc))
        }
        (Job::CloneWithoutLeader, JobOutcome::Failed(e)) => Some(decision(
            obs,
            format!("failed to create a replica without a leader ({e}); will retry"),
            vec![Action::RemoveDataDir],
            Role::Uninitialized,
            PgState::Stopped,
        )),
        (Job::CloneWithoutLeader, _) => {
            mem.reset_rewind_state();
            let role = ConfigRole::Standby {
                upstream: None,
                slot_name: None,
            };
            Some(decision(
                obs,
                "replica created without a leader; starting it".into(),
                vec![Action::StartJob(Job::Start { role })],
                Role::Replica,
                PgState::Starting,
            ))
        }
        (Job::Basebackup { from } | Job::Reinitialize { from }, JobOutcome::Failed(e)) => {
            Some(decision(
                obs,
                format!(
                    "failed to create a replica from '{}' ({e}); will retry",
                    from.member
                ),
                vec![Action::RemoveDataDir],
                Role::Uninitialized,
                PgState::Stopped,
            ))
        }
        (Job::Basebackup { from } | Job::Reinitialize { from }, _) => {
            mem.reset_rewind_state();
            let role = ConfigRole::Standby {
                upstream: Some(from.clone()),
                slot_name: None,
            };
            Some(decision(
                obs,
                format!("replica created from '{}'; starting it", from.member),
                vec![Action::StartJob(Job::Start { role })],
                Role::Replica,
                PgState::Starting,
            ))
        }
        (Job::CheckDivergence { from }, JobOutcome::Divergence(d)) => {
            mem.divergence = Some((from.clone(), d.clone()));
            None
        }
        (Job::CheckDivergence { from }, JobOutcome::Failed(e)) => {
            mem.divergence = Some((from.clone(), Divergence::Unknown(e.clone())));
            None
        }
        (Job::Rewind { from }, JobOutcome::Failed(e)) => {
            // Often transient (the new leader has not checkpointed yet): check again next
            // cycle rather than giving up on this node.
            mem.divergence = None;
            let mut actions = vec![];
            let mut msg = format!("pg_rewind from '{}' failed ({e}); will retry", from.member);
            if obs.config.remove_data_directory_on_rewind_failure {
                actions.push(Action::RemoveDataDir);
                msg.push_str("; removing the data directory to rebuild it with pg_basebackup");
                mem.reset_rewind_state();
            }
            Some(decision(obs, msg, actions, Role::Replica, PgState::Stopped))
        }
        (Job::Rewind { from }, _) => {
            mem.divergence = Some((from.clone(), Divergence::NotDiverged));
            None
        }
        (Job::Start { .. }, JobOutcome::Failed(e)) => Some(decision(
            obs,
            format!("failed to start PostgreSQL ({e})"),
            vec![],
            super::current_role(&obs.pg, mem),
            PgState::StartFailed,
        ))
        .filter(|_| cluster.leader_name() != Some(me.as_str()) || obs.pg.is_running()),
        _ => None,
    }
}
