//! Standby cluster: the leader of this cluster is a "standby leader" that replicates from a
//! remote primary (`standby_cluster` in the dynamic configuration) and never promotes; its
//! replicas cascade from it. Removing the section promotes it (the normal leader path);
//! adding it to a normal cluster turns the primary into a standby leader.

use super::{Action, Branch, Decision, Divergence, Job, Memory, Observation, decision};
use crate::dcs::{Cluster, PgState, Role};
use crate::postgres::settings::StandbyClusterSettings;
use crate::postgres::types::{ConfigRole, REMOTE_PRIMARY, SqlObservation, StopMode, UpstreamConn};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The `standby_cluster` section, typed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StandbyCluster {
    /// Empty when only restore_command is configured (archive-only standby cluster).
    pub host: String,
    pub port: u16,
    pub primary_slot_name: Option<String>,
    /// Only `basebackup` is implemented; other methods are reported and skipped.
    pub create_replica_methods: Vec<String>,
    pub restore_command: Option<String>,
    pub archive_cleanup_command: Option<String>,
    pub recovery_min_apply_delay: Option<String>,
}

fn text(m: &Map<String, Value>, k: &str) -> Option<String> {
    match m.get(k)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl StandbyCluster {
    /// Upstream treats the section as active when it names a host, a port or a
    /// restore_command; anything else (e.g. `standby_cluster: {}`) is a normal cluster.
    pub fn from_map(m: &Map<String, Value>) -> Option<StandbyCluster> {
        let host = text(m, "host");
        let port = text(m, "port");
        let restore = text(m, "restore_command");
        if host.is_none() && port.is_none() && restore.is_none() {
            return None;
        }
        let methods = match m.get("create_replica_methods") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => vec![],
        };
        Some(StandbyCluster {
            host: host.unwrap_or_else(|| {
                if port.is_some() {
                    "127.0.0.1".into()
                } else {
                    String::new()
                }
            }),
            port: port.and_then(|p| p.parse().ok()).unwrap_or(5432),
            primary_slot_name: text(m, "primary_slot_name"),
            create_replica_methods: methods,
            restore_command: restore,
            archive_cleanup_command: text(m, "archive_cleanup_command"),
            recovery_min_apply_delay: text(m, "recovery_min_apply_delay"),
        })
    }

    /// The remote primary as an upstream (its recovery settings come from this section).
    pub fn upstream(&self) -> UpstreamConn {
        UpstreamConn {
            host: self.host.clone(),
            port: self.port,
            member: REMOTE_PRIMARY.to_string(),
        }
    }

    /// What the PostgreSQL layer needs to render the standby leader's recovery settings.
    pub fn pg_settings(&self) -> StandbyClusterSettings {
        let mut recovery = BTreeMap::new();
        for (k, v) in [
            ("restore_command", &self.restore_command),
            ("archive_cleanup_command", &self.archive_cleanup_command),
            ("recovery_min_apply_delay", &self.recovery_min_apply_delay),
        ] {
            if let Some(v) = v {
                recovery.insert(k.to_string(), v.clone());
            }
        }
        StandbyClusterSettings {
            primary_slot_name: self.primary_slot_name.clone(),
            recovery,
            create_replica_methods: self.create_replica_methods.clone(),
        }
    }

    /// Where the remote is, for messages.
    pub fn describe(&self) -> String {
        if self.host.is_empty() {
            "the archive (restore_command)".to_string()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The standby-cluster section in effect this cycle, if any.
pub fn remote(obs: &Observation) -> Option<&StandbyCluster> {
    obs.config.standby_cluster.as_ref()
}

/// Standby-leader configuration for PostgreSQL.
pub fn remote_role(sc: &StandbyCluster) -> ConfigRole {
    ConfigRole::Standby {
        upstream: Some(sc.upstream()),
        slot_name: None,
    }
}

/// We hold the leader key in a standby cluster and PostgreSQL accepts connections.
pub(super) fn leader_cycle(
    obs: &Observation,
    cluster: &Cluster,
    mem: &mut Memory,
    sc: &StandbyCluster,
    sql: &SqlObservation,
) -> Decision {
    let me = obs.config.name.as_str();
    let retain = super::slots::update_retention(obs, cluster, mem);
    let (held, role) = if !sql.in_recovery && obs.config.paused {
        let b = Branch::new(
            "PAUSE: running as a primary although standby_cluster is configured; not demoting while paused",
            vec![],
        );
        (b, Role::Primary)
    } else if !sql.in_recovery {
        // demote-cluster (upstream 4.x): keep the key and stop; the next cycle (down,
        // with the key) checks our timeline against the remote, rewinds if we wrote on
        // our own timeline meanwhile, and starts as the standby leader.
        mem.divergence = None;
        let actions = vec![Action::Stop {
            mode: StopMode::Fast,
        }];
        let msg = format!(
            "demoting to a standby cluster: stopping to restart as the standby leader following {}",
            sc.describe()
        );
        (Branch::new(msg, actions), Role::StandbyLeader)
    } else {
        let mut actions = vec![];
        let target = Some((sc.host.clone(), sc.port)).filter(|_| !sc.host.is_empty());
        let msg = if target.is_some() && obs.pg.configured_primary != target {
            actions.push(Action::Follow {
                upstream: Some(sc.upstream()),
            });
            format!(
                "following a remote primary {} as the standby leader",
                sc.describe()
            )
        } else {
            format!("no action. I am ({me}), the standby leader with the lock")
        };
        actions.extend(super::leader::primary_housekeeping_with(
            obs, cluster, &retain,
        ));
        (Branch::new(msg, actions), Role::StandbyLeader)
    };
    let lost =
        Branch::new("lost the leader lock as the standby leader", vec![]).with_role(Role::Replica);
    let mut d = decision(
        obs,
        String::new(),
        vec![Action::UpdateLock {
            held: held.with_role(role),
            lost,
        }],
        role,
        PgState::Running,
    );
    d.status_slots = Some(super::slots::leader_status(obs, cluster, sql, retain));
    d
}

/// The leader key is ours but PostgreSQL is down: start it as the standby leader. A data
/// directory that was a primary (demote-cluster) may have written on its own timeline: it
/// is checked against the remote primary first and rewound from it if it diverged, as
/// upstream does before following the remote member.
pub(super) fn start_standby_leader(
    obs: &Observation,
    mem: &mut Memory,
    sc: &StandbyCluster,
    was_primary: bool,
) -> Decision {
    let held = match standby_leader_step(obs, mem, sc, was_primary) {
        Some(b) => b,
        None => Branch::new(
            format!("starting the standby leader following {}", sc.describe()),
            vec![Action::StartJob(Job::Start {
                role: remote_role(sc),
            })],
        ),
    }
    .with_role(Role::StandbyLeader);
    let lost = Branch::new("lost the leader lock while PostgreSQL was down", vec![]);
    decision(
        obs,
        String::new(),
        vec![Action::UpdateLock { held, lost }],
        Role::StandbyLeader,
        PgState::Stopped,
    )
}

/// The divergence check / rewind that must come before starting a former primary as the
/// standby leader; `None` when it may start now.
fn standby_leader_step(
    obs: &Observation,
    mem: &mut Memory,
    sc: &StandbyCluster,
    was_primary: bool,
) -> Option<Branch> {
    let up = sc.upstream();
    if !was_primary || sc.host.is_empty() {
        return None;
    }
    let checked = mem.divergence_from(&up);
    let job = |job: Job, msg: String| Branch::new(msg, vec![Action::StartJob(job)]);
    match checked {
        None => Some(job(
            Job::CheckDivergence { from: up },
            format!(
                "checking whether my timeline diverged from the remote primary {}",
                sc.describe()
            ),
        )),
        Some(Divergence::NotDiverged) => None,
        Some(Divergence::Diverged(why)) if obs.config.use_pg_rewind && !mem.rewind_failed => {
            Some(job(
                Job::Rewind { from: up },
                format!(
                    "running pg_rewind from the remote primary {} ({why})",
                    sc.describe()
                ),
            ))
        }
        Some(Divergence::Diverged(why)) => Some(Branch::new(
            format!(
                "my timeline diverged from the remote primary {} ({why}); not starting \
                 (enable use_pg_rewind)",
                sc.describe()
            ),
            vec![],
        )),
        Some(Divergence::Unknown(why)) => {
            mem.divergence = None;
            Some(Branch::new(
                format!("could not check timeline divergence ({why}); will retry"),
                vec![],
            ))
        }
    }
}

/// Won the initialize race in a standby cluster: clone the remote primary instead of initdb.
pub(super) fn bootstrap_branch(sc: &StandbyCluster, me: &str) -> Branch {
    Branch::new(
        format!(
            "trying to bootstrap a new standby leader from {} ({me} won the initialize race)",
            sc.describe()
        ),
        vec![Action::StartJob(Job::Basebackup {
            from: sc.upstream(),
        })],
    )
}

/// The clone of the remote primary finished: record the system identifier, write the
/// bootstrap config and take the leader key as the standby leader.
pub(super) fn bootstrap_finished(obs: &Observation, sc: &StandbyCluster) -> Decision {
    let sysid = obs.pg.system_identifier().unwrap_or_default().to_string();
    let start = |msg: &str| {
        Branch::new(
            msg.to_string(),
            vec![Action::StartJob(Job::Start {
                role: remote_role(sc),
            })],
        )
    };
    let won = start(&format!(
        "cloned the remote primary {}; {} is the standby leader",
        sc.describe(),
        obs.config.name
    ))
    .with_role(Role::StandbyLeader);
    let lost = start("cloned the remote primary but somebody else holds the leader key")
        .with_role(Role::Replica);
    decision(
        obs,
        String::new(),
        vec![
            Action::SetInitialize { sysid },
            Action::WriteBootstrapConfig,
            Action::AcquireLock { won, lost },
        ],
        Role::StandbyLeader,
        PgState::Starting,
    )
}
