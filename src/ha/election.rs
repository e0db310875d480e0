//! Nobody holds the leader key: race for it if we are the healthiest member.

use super::{Action, Branch, Decision, Memory, Observation, decision, leader, switchover};
use crate::dcs::{Cluster, PgState, Role};
use crate::postgres::types::StopMode;

/// An election is on, or the leader checks a switchover candidate.
pub(super) fn needs_peers(obs: &Observation) -> bool {
    let super::DcsView::Ok(c) = &obs.dcs else {
        return false;
    };
    if !obs.pg.is_healthy() || !matches!(obs.job, super::JobState::Idle) {
        return false;
    }
    let leading = c.leader_name() == Some(obs.config.name.as_str());
    (c.is_unlocked() && !obs.config.nofailover()) || (leading && switchover::pending(c).is_some())
}

pub(super) fn unlocked(obs: &Observation, cluster: &Cluster, mem: &mut Memory) -> Decision {
    let sql = obs.pg.sql.as_ref().expect("healthy");
    let me = obs.config.name.as_str();
    if obs.config.paused && sql.in_recovery {
        // Paused: replicas never race; a running primary may re-take the key (below).
        return decision(
            obs,
            format!("PAUSE: no action. I am ({me}), a secondary, and the cluster has no leader"),
            vec![],
            Role::Replica,
            PgState::Running,
        );
    }
    let failover = switchover::pending(cluster);
    let manual = failover.and_then(|f| switchover::no_leader_step(obs, cluster, f));
    let verdict = match &manual {
        // Paused: a running primary re-takes the key; nobody demotes.
        _ if obs.config.paused => Ok(()),
        _ if sql.in_recovery && pre_promote_backoff(obs, mem) => Err(
            "backoff: skip leader race after pre_promote script failure and releasing the lock voluntarily"
                .into(),
        ),
        Some(v) => v.clone(),
        None => is_healthiest(obs, cluster, failover.and_then(|f| f.leader.as_deref())),
    };
    if let Err(why) = verdict {
        if !sql.in_recovery {
            // A primary without the lock that may not lead must stop accepting writes.
            return decision(
                obs,
                format!("demoting self because I am not the healthiest node ({why})"),
                vec![Action::Stop {
                    mode: StopMode::Fast,
                }],
                Role::Demoted,
                PgState::Stopping,
            );
        }
        return decision(
            obs,
            format!("following a different leader because i am not the healthiest node ({why})"),
            vec![],
            Role::Replica,
            PgState::Running,
        );
    }
    // A switchover candidate promotes only with the former leader's last WAL in hand, so
    // the former primary can follow without pg_rewind.
    let switchover_candidate = failover.is_some_and(|f| f.leader.is_some()) && sql.in_recovery;
    if switchover_candidate && !switchover::caught_up(obs, cluster) {
        let since = *mem.catch_up_since_ms.get_or_insert(obs.now_ms);
        if obs.now_ms.saturating_sub(since) < switchover::CATCH_UP_BUDGET_MS {
            let mut d = decision(
                obs,
                "switchover candidate: waiting to receive the former leader's last WAL".into(),
                vec![],
                Role::Replica,
                PgState::Running,
            );
            d.recheck_ms = Some(50);
            return d;
        }
    }
    mem.catch_up_since_ms = None;
    let standby = super::standby::remote(obs);
    let (won_msg, mut won_actions) = if let Some(sc) = standby.filter(|_| sql.in_recovery) {
        // A standby cluster's leader never promotes: it follows the remote primary.
        mem.divergence = None;
        (
            format!(
                "acquired session lock as a standby leader; following {}",
                sc.describe()
            ),
            vec![Action::Follow {
                upstream: Some(sc.upstream()),
            }],
        )
    } else if sql.in_recovery {
        mem.divergence = None;
        let mut actions = super::sync::on_promote(obs, cluster);
        actions.push(Action::Promote);
        (
            "promoted self to leader by acquiring session lock".to_string(),
            actions,
        )
    } else {
        (
            "acquired session lock as a leader".to_string(),
            leader::primary_housekeeping(obs, cluster),
        )
    };
    if let Some(f) = &cluster.failover {
        won_actions.push(Action::ClearFailover { version: f.version });
    }
    let won_role = if standby.is_some() && sql.in_recovery {
        Role::StandbyLeader
    } else {
        Role::Primary
    };
    let won = Branch::new(won_msg, won_actions).with_role(won_role);
    let lost = Branch::new(format!("{me} lost the leader race"), vec![])
        .with_role(current_replica_role(sql));
    let mut d = decision(
        obs,
        String::new(),
        vec![Action::AcquireLock { won, lost }],
        current_replica_role(sql),
        PgState::Running,
    );
    // A promotion is followed at once by the new leader's housekeeping (history, slots).
    if sql.in_recovery {
        d.recheck_ms = Some(200);
    }
    d
}

/// Upstream: after the pre_promote script failed and we released the key, stay out of
/// the race for ttl so another member gets its chance.
fn pre_promote_backoff(obs: &Observation, mem: &mut Memory) -> bool {
    match mem.pre_promote_failed_ms {
        Some(at) if obs.now_ms.saturating_sub(at) < obs.config.ttl * 1000 => true,
        Some(_) => {
            mem.pre_promote_failed_ms = None;
            false
        }
        None => false,
    }
}

fn current_replica_role(sql: &crate::postgres::types::SqlObservation) -> Role {
    if sql.in_recovery {
        Role::Replica
    } else {
        Role::Primary
    }
}

/// Upstream's `_is_healthiest_node`: may we take over? `Err(reason)` if not. `former`
/// (the leader that handed over in a switchover) is left out of the comparison.
pub(super) fn is_healthiest(
    obs: &Observation,
    cluster: &Cluster,
    former: Option<&str>,
) -> Result<(), String> {
    let cfg = &obs.config;
    if cfg.nofailover() {
        return Err("tagged nofailover".into());
    }
    super::sync::may_promote(obs, cluster)?;
    let sql = obs
        .pg
        .sql
        .as_ref()
        .ok_or("PostgreSQL is not accepting connections")?;
    let my_tl = Some(sql.timeline).filter(|t| *t > 0);
    if !sql.in_recovery
        && let (Some(mine), Some(cluster_tl)) = (my_tl, cluster.timeline())
        && mine < cluster_tl
    {
        // A primary whose key expired while another node was promoted (upstream checks
        // this whatever check_timeline says).
        return Err(format!(
            "my timeline {mine} is behind last known cluster timeline {cluster_tl}"
        ));
    }
    if sql.in_recovery
        && let Some(why) = super::crash::timeline_behind(obs, cluster, my_tl)
    {
        return Err(format!("my {why}"));
    }
    let my_wal = sql.wal_lsn;
    if sql.in_recovery
        && let Some(leader_optime) = cluster.status.optime
        && leader_optime.saturating_sub(my_wal) > cfg.maximum_lag_on_failover
    {
        return Err(format!(
            "my wal position exceeds maximum replication lag ({} bytes behind the last known leader position)",
            leader_optime - my_wal
        ));
    }
    for peer in &obs.peers {
        let Some(r) = &peer.reply else { continue };
        if peer.name == cfg.name || Some(peer.name.as_str()) == former {
            continue;
        }
        // In synchronous mode only peers that may be promoted compete with us.
        if cfg.sync.enabled()
            && cluster.sync.as_ref().is_some_and(|s| s.leader.is_some())
            && !super::sync::is_sync_member(cluster, &peer.name)
        {
            continue;
        }
        if r.is_primary {
            return Err(format!("primary '{}' is still alive", peer.name));
        }
        if r.nofailover || r.watchdog_failed {
            continue;
        }
        if r.wal_position > my_wal {
            return Err(format!(
                "'{}' has a more recent WAL position ({} > {my_wal})",
                peer.name, r.wal_position
            ));
        }
        if r.wal_position == my_wal && r.failover_priority > cfg.failover_priority() {
            return Err(format!(
                "'{}' has the same WAL position and a higher failover_priority",
                peer.name
            ));
        }
    }
    Ok(())
}
