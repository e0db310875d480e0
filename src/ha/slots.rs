//! Physical replication slots the primary keeps for its members.

use super::Action;
use crate::dcs::Cluster;
use crate::postgres::types::SqlObservation;

/// Upstream's slot_name_from_member_name (one implementation, in the pure conf helpers).
pub fn slot_name(member: &str) -> String {
    crate::postgres::conf::slot_name_from_member_name(member)
}

/// A member whose `replicatefrom` names another member that exists streams from it, not
/// from us: a slot here would only hold back WAL.
fn cascades_from_other(m: &crate::dcs::Member, me: &str, cluster: &Cluster) -> bool {
    m.data
        .tags
        .get("replicatefrom")
        .and_then(|v| v.as_str())
        .is_some_and(|rf| rf != me && rf != m.name && cluster.member(rf).is_some())
}

/// Create slots for every other member that streams from us; drop inactive physical slots
/// of members that left the cluster.
pub fn slot_actions(me: &str, cluster: &Cluster, sql: &SqlObservation) -> Vec<Action> {
    let wanted: Vec<String> = cluster
        .members
        .iter()
        .filter(|m| m.name != me && !m.data.tag_bool("nostream"))
        .filter(|m| !cascades_from_other(m, me, cluster))
        .map(|m| slot_name(&m.name))
        .collect();
    let physical: Vec<&str> = sql
        .slots
        .iter()
        .filter(|s| s.slot_type == "physical")
        .map(|s| s.name.as_str())
        .collect();
    let create: Vec<String> = wanted
        .iter()
        .filter(|w| !physical.contains(&w.as_str()))
        .cloned()
        .collect();
    let drop: Vec<String> = sql
        .slots
        .iter()
        .filter(|s| s.slot_type == "physical" && !s.active && !wanted.contains(&s.name))
        .map(|s| s.name.clone())
        .collect();
    let mut out = vec![];
    if !create.is_empty() {
        out.push(Action::CreateSlots(create));
    }
    if !drop.is_empty() {
        out.push(Action::DropSlots(drop));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn names() {
        assert_eq!(slot_name("PostgreSQL-0.node"), "postgresql_0_node");
        assert_eq!(slot_name(&"a".repeat(70)).len(), 63);
    }
}
