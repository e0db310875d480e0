//! Synchronous replication (`synchronous_mode: on`): the leader manages
//! `synchronous_standby_names` and the DCS `sync` key so that the key only ever names
//! standbys PostgreSQL already waits for. Only those may be promoted after the leader is
//! lost, so an acknowledged commit survives any single failure.
//!
//! Ordering (as upstream): narrow the key before narrowing PostgreSQL's list; widen the
//! key only after PostgreSQL reports the standby as `sync`.

use super::{Action, Observation};
use crate::dcs::{Cluster, tag_is_true};
use crate::postgres::types::SqlObservation;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SyncMode {
    #[default]
    Off,
    On,
    /// `synchronous_mode: quorum` (ANY n): handled like `on` for who may be promoted.
    Quorum,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct SyncConfig {
    pub mode: SyncMode,
    pub strict: bool,
    pub node_count: usize,
    /// Bytes; negative disables the check (upstream default -1).
    pub maximum_lag_on_syncnode: i64,
}

impl SyncConfig {
    pub fn from_value(
        mode: &serde_json::Value,
        strict: bool,
        node_count: u64,
        max_lag: i64,
    ) -> SyncConfig {
        let mode = match mode {
            serde_json::Value::Bool(true) => SyncMode::On,
            serde_json::Value::String(s) => match s.to_ascii_lowercase().as_str() {
                "on" | "true" | "yes" | "1" => SyncMode::On,
                "quorum" => SyncMode::Quorum,
                _ => SyncMode::Off,
            },
            _ => SyncMode::Off,
        };
        SyncConfig {
            mode,
            strict,
            node_count: node_count.max(1) as usize,
            maximum_lag_on_syncnode: max_lag,
        }
    }

    pub fn enabled(&self) -> bool {
        self.mode != SyncMode::Off
    }
}

fn lower(names: &[String]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
    v.sort();
    v.dedup();
    v
}

/// The standby names in a `synchronous_standby_names` value we wrote
/// (`N ("a","b")`, `ANY N (...)`, `"a"`, `*`, or empty).
pub fn parse_ssn(value: &str) -> Vec<String> {
    let v = value.trim();
    let inner = match (v.find('('), v.rfind(')')) {
        (Some(a), Some(b)) if a < b => &v[a + 1..b],
        _ => v,
    };
    lower(
        &inner
            .split(',')
            .map(|n| n.trim().trim_matches('"').to_string())
            .filter(|n| !n.is_empty())
            .collect::<Vec<_>>(),
    )
}

/// Render the GUC value for `names` (already ordered by preference).
pub fn render_ssn(names: &[String], cfg: &SyncConfig) -> String {
    if names.is_empty() {
        return String::new();
    }
    let list = names
        .iter()
        .map(|n| format!("\"{}\"", n.replace('"', "")))
        .collect::<Vec<_>>()
        .join(",");
    let n = cfg.node_count.min(names.len());
    match cfg.mode {
        SyncMode::Quorum => format!("ANY {n} ({list})"),
        _ => format!("{n} ({list})"),
    }
}

/// One standby that may become synchronous, with what ranks it.
struct Candidate {
    priority: i64,
    /// Already synchronous (PostgreSQL waits for it, or our `sync` key names it).
    current: bool,
    nofailover: bool,
    flush: u64,
    name: String,
}

/// Standbys that may become synchronous, best first, at most `limit`.
///
/// Upstream's preference: the current synchronous standby is kept unless it disconnects,
/// lags beyond `maximum_lag_on_syncnode` or opts out (nosync, sync_priority 0). Switching
/// without need is not free: every switch narrows the `sync` key for a cycle, and a fault
/// in that window leaves no member that may be promoted. After `sync_priority`, members
/// that may fail over come before `nofailover` ones, then the most WAL received.
fn pick(
    obs: &Observation,
    cluster: &Cluster,
    sql: &SqlObservation,
    key: &KeyView,
    limit: usize,
) -> Vec<String> {
    let cfg = &obs.config.sync;
    let mut cands: Vec<Candidate> = sql
        .replication
        .iter()
        .filter(|r| r.state == "streaming")
        .filter_map(|r| {
            let m = cluster
                .members
                .iter()
                .find(|m| m.name.eq_ignore_ascii_case(&r.application_name))?;
            if tag_is_true(m.data.tags.get("nosync")) {
                return None;
            }
            let flush = r.flush_lsn.unwrap_or(0);
            let lag = sql.wal_lsn.saturating_sub(flush);
            if cfg.maximum_lag_on_syncnode >= 0 && lag > cfg.maximum_lag_on_syncnode as u64 {
                return None;
            }
            let priority = m
                .data
                .tags
                .get("sync_priority")
                .and_then(|p| p.as_i64())
                .unwrap_or(1);
            if priority <= 0 {
                return None;
            }
            let current = matches!(r.sync_state.as_str(), "sync" | "quorum")
                || key.members.contains(&m.name.to_ascii_lowercase());
            Some(Candidate {
                priority,
                current,
                nofailover: m.data.nofailover(),
                flush,
                name: m.name.clone(),
            })
        })
        .collect();
    cands.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then(b.current.cmp(&a.current))
            .then(a.nofailover.cmp(&b.nofailover))
            .then(b.flush.cmp(&a.flush))
            .then(a.name.cmp(&b.name))
    });
    cands.into_iter().take(limit).map(|c| c.name).collect()
}

/// The `sync` key as this leader sees it: (members, quorum), empty unless it is ours.
struct KeyView {
    mine: bool,
    members: Vec<String>,
    quorum: usize,
    version: Option<i64>,
}

fn key_view(cluster: &Cluster, me: &str) -> KeyView {
    let key = cluster.sync.as_ref();
    let mine = key
        .and_then(|s| s.leader.as_deref())
        .is_some_and(|l| l.eq_ignore_ascii_case(me));
    KeyView {
        mine,
        members: if mine {
            lower(&key.map(|s| s.members()).unwrap_or_default())
        } else {
            vec![]
        },
        quorum: if mine {
            key.and_then(|s| s.quorum).unwrap_or(0) as usize
        } else {
            0
        },
        version: key.map(|s| s.version),
    }
}

/// The leader's sync-state step this cycle: actions, and whether to look again soon.
/// A key change and a `synchronous_standby_names` change never share a cycle: the second
/// only happens once the first was written (and seen back), so a failed compare-and-set
/// can never leave PostgreSQL ahead of the key.
pub fn leader_actions(obs: &Observation, cluster: &Cluster) -> (Vec<Action>, bool) {
    let me = obs.config.name.as_str();
    let Some(sql) = obs.pg.sql.as_ref().filter(|s| !s.in_recovery) else {
        return (vec![], false);
    };
    let key = key_view(cluster, me);
    let cfg = &obs.config.sync;
    if !cfg.enabled() {
        // Synchronous mode was turned off: forget the key and our setting.
        if key.mine {
            return (
                vec![
                    Action::DeleteSyncState {
                        version: key.version,
                    },
                    Action::SetSyncStandbyNames(None),
                ],
                false,
            );
        }
        return (vec![], false);
    }
    let quorum_mode = cfg.mode == SyncMode::Quorum;
    let limit = if quorum_mode {
        usize::MAX
    } else {
        cfg.node_count
    };
    let picked = pick(obs, cluster, sql, &key, limit);
    let picked_l = lower(&picked);
    // Acknowledgements each commit waits for under the wanted setting.
    let acks = if quorum_mode {
        cfg.node_count.min(picked.len())
    } else {
        picked.len()
    };
    let wanted_ssn = if picked.is_empty() && cfg.strict {
        "*".to_string()
    } else {
        render_ssn(&picked, cfg)
    };
    let write = |members: &[String], quorum: Option<usize>| Action::WriteSyncState {
        members: members.to_vec(),
        quorum: quorum.map(|q| q as u32),
        version: key.version,
    };
    let ssn_now = parse_ssn(&sql.synchronous_standby_names);
    // Standbys PostgreSQL waits for now and that have everything committed so far.
    let confirmed: Vec<String> = lower(
        &sql.replication
            .iter()
            .filter(|r| matches!(r.sync_state.as_str(), "sync" | "quorum"))
            .filter(|r| ssn_now.contains(&r.application_name.to_ascii_lowercase()))
            .filter(|r| !quorum_mode || r.flush_lsn.unwrap_or(0) >= sql.wal_lsn)
            .map(|r| r.application_name.clone())
            .collect::<Vec<_>>(),
    );
    let in_both: Vec<String> = picked_l
        .iter()
        .filter(|n| confirmed.contains(n))
        .cloned()
        .collect();
    if sql.synchronous_standby_names.trim() != wanted_ssn {
        let target = if quorum_mode {
            widened_quorum_key(&key, &picked_l, acks)
        } else {
            // Narrow to who stays synchronous before PostgreSQL's list changes.
            let common: Vec<String> = key
                .members
                .iter()
                .filter(|n| in_both.contains(n))
                .cloned()
                .collect();
            (common, None)
        };
        let key_now = (key.members.clone(), quorum_mode.then_some(key.quorum));
        if !key.mine || target != key_now {
            return (vec![write(&target.0, target.1)], true);
        }
        return (vec![Action::SetSyncStandbyNames(Some(wanted_ssn))], true);
    }
    let (target, ready) = if quorum_mode {
        let ready = in_both.len() >= acks;
        (
            (picked_l.clone(), Some(picked_l.len().saturating_sub(acks))),
            ready,
        )
    } else {
        ((in_both.clone(), None), true)
    };
    let key_now = (key.members.clone(), quorum_mode.then_some(key.quorum));
    if target == key_now && key.mine {
        return (vec![], in_both.len() < picked_l.len());
    }
    if !ready {
        return (vec![], true);
    }
    (vec![write(&target.0, target.1)], false)
}

/// Quorum mode, before `synchronous_standby_names` changes: a key that is safe for both the
/// old and the new setting. Any `quorum + 1` of its members must include one that has every
/// commit acknowledged under either setting.
fn widened_quorum_key(
    key: &KeyView,
    picked: &[String],
    acks: usize,
) -> (Vec<String>, Option<usize>) {
    if key.members.is_empty() || acks == 0 {
        // Nothing promised yet, or going asynchronous: nobody may be promoted over us.
        return (vec![], Some(0));
    }
    let old_acks = key.members.len().saturating_sub(key.quorum).max(1);
    let mut union = key.members.clone();
    union.extend(picked.iter().cloned());
    let union = lower(&union);
    let q = union.len().saturating_sub(old_acks.min(acks));
    (union, Some(q))
}

/// Before a promotion in synchronous mode: claim the key with no standby (nobody may be
/// promoted over us yet) and start with `*` (strict) or no synchronous standby.
pub fn on_promote(obs: &Observation, cluster: &Cluster) -> Vec<Action> {
    if !obs.config.sync.enabled() {
        return vec![];
    }
    let ssn = if obs.config.sync.strict {
        Some("*".to_string())
    } else {
        Some(String::new())
    };
    vec![
        Action::WriteSyncState {
            members: vec![],
            quorum: (obs.config.sync.mode == SyncMode::Quorum).then_some(0),
            version: cluster.sync.as_ref().map(|s| s.version),
        },
        Action::SetSyncStandbyNames(ssn),
    ]
}

/// Failover gate: in synchronous mode only a member the `sync` key names may take over.
pub fn may_promote(obs: &Observation, cluster: &Cluster) -> Result<(), String> {
    if !obs.config.sync.enabled() {
        return Ok(());
    }
    let Some(sync) = cluster.sync.as_ref().filter(|s| s.leader.is_some()) else {
        // No sync state published yet (fresh cluster or mode just enabled).
        return Ok(());
    };
    let me = obs.config.name.to_ascii_lowercase();
    let members = lower(&sync.members());
    // As upstream (`sync.matches(name, check_leader=True)`): the leader the key names may
    // race too. It had every acknowledged commit when it led; without this, a new leader
    // whose promotion failed right after it claimed the key (with no standby yet) would
    // leave no member allowed to take over.
    if !members.contains(&me) && !is_key_leader(cluster, &me) {
        return Err("I am not a synchronous standby".into());
    }
    if obs.config.sync.mode != SyncMode::Quorum {
        return Ok(());
    }
    // Quorum: compare with at least `quorum` other voters (is_healthiest then checks that
    // none of them is ahead of us).
    let need = sync.quorum.unwrap_or(0) as usize;
    let seen = obs
        .peers
        .iter()
        .filter(|p| p.reply.is_some() && members.contains(&p.name.to_ascii_lowercase()))
        .count();
    if seen >= need {
        Ok(())
    } else {
        Err(format!(
            "only {seen} of the {need} other quorum members answered; cannot prove I have every commit"
        ))
    }
}

/// Whether the `sync` key was written by `name` as leader.
pub fn is_key_leader(cluster: &Cluster, name: &str) -> bool {
    cluster
        .sync
        .as_ref()
        .and_then(|s| s.leader.as_deref())
        .is_some_and(|l| l.eq_ignore_ascii_case(name))
}

/// Whether `name` is listed as synchronous (for switchover candidates).
pub fn is_sync_member(cluster: &Cluster, name: &str) -> bool {
    cluster
        .sync
        .as_ref()
        .is_some_and(|s| lower(&s.members()).contains(&name.to_ascii_lowercase()))
}
