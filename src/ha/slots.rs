//! Replication slots (upstream 4.x semantics):
//! - member slots: a physical slot for every other member on the leader, and on replicas
//!   too (so they exist after a failover); a member that left keeps its slot until
//!   member_slots_ttl after it was last seen (`retain_slots` in the `status` key), then the
//!   slot is dropped everywhere, so no slot retains WAL forever for a member that is gone;
//! - permanent slots from `/config` `slots`: physical ones on every node, logical ones
//!   created on the primary and copied to replicas (PostgreSQL 15 has no failover slots:
//!   the slot's state file is read from the primary with pg_read_binary_file, written
//!   into the replica's pg_replslot, the replica restarts to load it, and afterwards the
//!   slot is moved forward with pg_replication_slot_advance to the position the leader
//!   publishes in `status.slots`);
//! - `ignore_slots`: slots matching a rule are never dropped;
//! - every other inactive slot is dropped.

use super::{Action, Memory, Observation};
use crate::dcs::{Cluster, Member};
use crate::postgres::types::{SlotInfo, SqlObservation, UpstreamConn};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Upstream's slot_name_from_member_name (one implementation, in the pure conf helpers).
pub fn slot_name(member: &str) -> String {
    crate::postgres::conf::slot_name_from_member_name(member)
}

/// A permanent slot from the dynamic configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PermanentSlot {
    Physical,
    Logical { database: String, plugin: String },
}

/// One `ignore_slots` rule: every attribute given must match.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct IgnoreRule {
    pub name: Option<String>,
    pub slot_type: Option<String>,
    pub database: Option<String>,
    pub plugin: Option<String>,
}

impl IgnoreRule {
    pub fn matches(&self, s: &SlotInfo) -> bool {
        let eq =
            |rule: &Option<String>, v: Option<&str>| rule.as_deref().is_none_or(|r| Some(r) == v);
        eq(&self.name, Some(&s.name))
            && eq(&self.slot_type, Some(&s.slot_type))
            && eq(&self.database, s.database.as_deref())
            && eq(&self.plugin, s.plugin.as_deref())
    }
}

/// Slot settings from the dynamic configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotsConfig {
    pub permanent: BTreeMap<String, PermanentSlot>,
    pub ignore: Vec<IgnoreRule>,
    pub member_slots_ttl_ms: u64,
}

impl Default for SlotsConfig {
    fn default() -> Self {
        SlotsConfig {
            permanent: BTreeMap::new(),
            ignore: vec![],
            member_slots_ttl_ms: 30 * 60 * 1000,
        }
    }
}

fn field(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_string)
}

/// `30min`, `1h`, `90s`, `500ms`, `2d` or a number of seconds.
pub fn parse_duration_ms(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n * 1000);
    }
    let s = v.as_str()?.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..digits].parse().ok()?;
    let unit = match s[digits..].trim() {
        "ms" => 1,
        "" | "s" => 1000,
        "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    Some(n * unit)
}

impl SlotsConfig {
    pub fn from_dynamic(
        slots: Option<&Map<String, Value>>,
        ignore: Option<&Vec<Value>>,
        member_slots_ttl: &Value,
    ) -> SlotsConfig {
        let mut permanent = BTreeMap::new();
        for (name, v) in slots.into_iter().flatten() {
            let database = field(v, "database");
            let plugin = field(v, "plugin");
            let logical = match field(v, "type").as_deref() {
                Some("logical") => true,
                Some(_) => false,
                None => database.is_some() && plugin.is_some(),
            };
            let slot = match (logical, database, plugin) {
                (true, Some(database), Some(plugin)) => PermanentSlot::Logical { database, plugin },
                (true, _, _) => continue,
                _ => PermanentSlot::Physical,
            };
            permanent.insert(name.clone(), slot);
        }
        let ignore = ignore
            .into_iter()
            .flatten()
            .filter(|v| v.is_object())
            .map(|v| IgnoreRule {
                name: field(v, "name"),
                slot_type: field(v, "type"),
                database: field(v, "database"),
                plugin: field(v, "plugin"),
            })
            .collect();
        SlotsConfig {
            permanent,
            ignore,
            member_slots_ttl_ms: parse_duration_ms(member_slots_ttl).unwrap_or(30 * 60 * 1000),
        }
    }

    fn ignored(&self, s: &SlotInfo) -> bool {
        self.ignore.iter().any(|r| r.matches(s))
    }
}

/// A logical slot to create on the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalSlot {
    pub name: String,
    pub database: String,
    pub plugin: String,
}

/// Slot names and positions the leader publishes in `status`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StatusSlots {
    pub slots: BTreeMap<String, u64>,
    pub retain_slots: Vec<String>,
}

fn streams(m: &Member) -> bool {
    !m.data.tag_bool("nostream")
}

/// Leader only: refresh when each member slot was last seen (members present now), seed
/// from `status.retain_slots` after taking the key, and forget names older than
/// member_slots_ttl. Returns the member slot names still retained.
pub fn update_retention(obs: &Observation, cluster: &Cluster, mem: &mut Memory) -> Vec<String> {
    let now = obs.now_ms;
    let cfg = &obs.config.slots;
    let seen = mem.retain_slots.get_or_insert_with(|| {
        cluster
            .status
            .retain_slots
            .iter()
            .map(|n| (n.clone(), now))
            .collect()
    });
    for m in cluster.members.iter().filter(|m| streams(m)) {
        let n = slot_name(&m.name);
        if !cfg.permanent.contains_key(&n) {
            seen.insert(n, now);
        }
    }
    seen.retain(|_, at| now.saturating_sub(*at) < cfg.member_slots_ttl_ms);
    seen.keys().cloned().collect()
}

/// Physical slots this node should have: member slots (plus retained ones) and permanent
/// physical slots, never one for ourselves.
fn wanted_physical(
    obs: &Observation,
    cluster: &Cluster,
    leader: bool,
    retain: &[String],
) -> BTreeSet<String> {
    let me = obs.config.name.as_str();
    let mine = slot_name(me);
    let cfg = &obs.config.slots;
    let all_members = leader || (cfg.member_slots_ttl_ms > 0 && !obs.config.nofailover());
    let mut out: BTreeSet<String> = cluster
        .members
        .iter()
        .filter(|m| m.name != me && streams(m))
        .filter(|m| {
            all_members || m.data.tags.get("replicatefrom").and_then(Value::as_str) == Some(me)
        })
        .map(|m| slot_name(&m.name))
        .collect();
    if leader || !obs.config.nofailover() {
        out.extend(retain.iter().filter(|n| **n != mine).cloned());
        let physical = cfg
            .permanent
            .iter()
            .filter(|(_, p)| **p == PermanentSlot::Physical);
        out.extend(physical.map(|(n, _)| n.clone()).filter(|n| *n != mine));
    }
    out
}

/// Permanent logical slots (none in a standby cluster or on a nofailover node).
fn wanted_logical(obs: &Observation) -> Vec<LogicalSlot> {
    if obs.config.standby_cluster.is_some() || obs.config.nofailover() {
        return vec![];
    }
    obs.config
        .slots
        .permanent
        .iter()
        .filter_map(|(name, p)| match p {
            PermanentSlot::Logical { database, plugin } => Some(LogicalSlot {
                name: name.clone(),
                database: database.clone(),
                plugin: plugin.clone(),
            }),
            PermanentSlot::Physical => None,
        })
        .collect()
}

/// Inactive slots that are neither wanted (with the right type) nor ignored.
fn to_drop(
    obs: &Observation,
    sql: &SqlObservation,
    physical: &BTreeSet<String>,
    logical: &[LogicalSlot],
) -> Vec<String> {
    sql.slots
        .iter()
        .filter(|s| !s.active && !obs.config.slots.ignored(s))
        .filter(|s| {
            let keep = if s.slot_type == "logical" {
                logical.iter().any(|l| {
                    l.name == s.name
                        && s.database.as_deref() == Some(&l.database)
                        && s.plugin.as_deref() == Some(&l.plugin)
                })
            } else {
                physical.contains(&s.name)
            };
            !keep
        })
        .map(|s| s.name.clone())
        .collect()
}

fn push_nonempty<T>(out: &mut Vec<Action>, items: Vec<T>, make: impl FnOnce(Vec<T>) -> Action) {
    if !items.is_empty() {
        out.push(make(items));
    }
}

/// The leader (primary or standby leader): create missing member and permanent slots,
/// drop the rest.
pub fn slot_actions(
    obs: &Observation,
    cluster: &Cluster,
    sql: &SqlObservation,
    retain: &[String],
) -> Vec<Action> {
    let physical = wanted_physical(obs, cluster, true, retain);
    let logical = if sql.in_recovery {
        vec![]
    } else {
        wanted_logical(obs)
    };
    let exists = |n: &str| sql.slots.iter().any(|s| s.name == n);
    let drop = to_drop(obs, sql, &physical, &logical);
    let mut out = vec![];
    push_nonempty(&mut out, drop.clone(), Action::DropSlots);
    let create: Vec<String> = physical.iter().filter(|n| !exists(n)).cloned().collect();
    push_nonempty(&mut out, create, Action::CreateSlots);
    let create_logical: Vec<LogicalSlot> = logical
        .into_iter()
        .filter(|l| !exists(&l.name) || drop.contains(&l.name))
        .collect();
    push_nonempty(&mut out, create_logical, Action::CreateLogicalSlots);
    out
}

/// A replica following `leader`: keep copies of member and permanent slots, moved forward
/// to the positions the leader publishes; copy missing permanent logical slots from it.
pub fn replica_actions(obs: &Observation, cluster: &Cluster, leader: &UpstreamConn) -> Vec<Action> {
    let Some(sql) = obs.pg.sql.as_ref().filter(|s| s.in_recovery) else {
        return vec![];
    };
    if !obs.config.use_slots {
        return vec![];
    }
    let physical = wanted_physical(obs, cluster, false, &cluster.status.retain_slots);
    let logical = wanted_logical(obs);
    let exists = |n: &str| sql.slots.iter().any(|s| s.name == n);
    let mut out = vec![];
    push_nonempty(
        &mut out,
        to_drop(obs, sql, &physical, &logical),
        Action::DropSlots,
    );
    let create: Vec<String> = physical.iter().filter(|n| !exists(n)).cloned().collect();
    push_nonempty(&mut out, create, Action::CreateSlots);
    let advance: Vec<(String, u64)> = sql
        .slots
        .iter()
        .filter(|s| !s.active)
        .filter(|s| physical.contains(&s.name) || logical.iter().any(|l| l.name == s.name))
        .filter_map(|s| {
            let target = *cluster.status.slots.get(&s.name)?;
            (s.position().is_some_and(|p| p < target)).then(|| (s.name.clone(), target))
        })
        .collect();
    push_nonempty(&mut out, advance, Action::AdvanceSlots);
    // Only slots the leader reports: they exist there and can be read.
    let copy: Vec<String> = logical
        .iter()
        .filter(|l| !exists(&l.name) && cluster.status.slots.contains_key(&l.name))
        .map(|l| l.name.clone())
        .collect();
    if !copy.is_empty() {
        out.push(Action::CopyLogicalSlots {
            from: leader.clone(),
            names: copy,
        });
    }
    out
}

/// What the leader writes into `status`: positions of the member and permanent slots it
/// has (and of its own member slot name: its WAL position, for the copies on replicas),
/// and the retained member slot names.
pub fn leader_status(
    obs: &Observation,
    cluster: &Cluster,
    sql: &SqlObservation,
    retain: Vec<String>,
) -> StatusSlots {
    let physical = wanted_physical(obs, cluster, true, &retain);
    let logical = wanted_logical(obs);
    let mut slots: BTreeMap<String, u64> = sql
        .slots
        .iter()
        .filter(|s| physical.contains(&s.name) || logical.iter().any(|l| l.name == s.name))
        .filter_map(|s| Some((s.name.clone(), s.position()?)))
        .collect();
    if obs.config.use_slots {
        slots.insert(slot_name(&obs.config.name), sql.wal_lsn);
    }
    StatusSlots {
        slots,
        retain_slots: retain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    #[test]
    fn names() {
        assert_eq!(slot_name("PostgreSQL-0.node"), "postgresql_0_node");
        assert_eq!(slot_name(&"a".repeat(70)).len(), 63);
    }
    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms(&json!("30min")), Some(1_800_000));
        assert_eq!(parse_duration_ms(&json!(5)), Some(5000));
        assert_eq!(parse_duration_ms(&json!("2h")), Some(7_200_000));
        assert_eq!(parse_duration_ms(&json!("soon")), None);
    }
}
