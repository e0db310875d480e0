//! Where a replica streams from and clones from, as the member tags say:
//! `replicatefrom` (cascading replication), `nostream` (archive only, no walreceiver) and
//! `clonefrom` (preferred pg_basebackup source).

use super::{Observation, upstream_of};
use crate::dcs::{Cluster, PgState, tag_is_true};
use crate::postgres::types::UpstreamConn;
use serde_json::Value;

/// The member this replica should stream from: the member named by `replicatefrom` while
/// its key exists (as upstream, whatever its state), otherwise `leader`. `None` with
/// `nostream` (recovery from the archive only) or when the target has no address yet.
pub fn stream_source(obs: &Observation, cluster: &Cluster, leader: &str) -> Option<UpstreamConn> {
    if tag_is_true(obs.config.tags.get("nostream")) {
        return None;
    }
    let me = obs.config.name.as_str();
    let cascade = replicatefrom(obs)
        .filter(|rf| *rf != me && *rf != leader)
        .and_then(|rf| upstream_of(cluster, rf));
    cascade.or_else(|| upstream_of(cluster, leader))
}

/// The `replicatefrom` tag, if set.
pub fn replicatefrom(obs: &Observation) -> Option<&str> {
    obs.config
        .tags
        .get("replicatefrom")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// Whether we stream from the leader itself (only then a slot on the leader is ours).
pub fn streams_from_leader(up: &UpstreamConn, cluster: &Cluster) -> bool {
    cluster.leader_name() == Some(up.member.as_str())
}

/// The basebackup source for an empty replica: a running member tagged `clonefrom` (not
/// us), else the leader. Upstream picks one of several at random; we take the first by
/// name so the choice is stable between cycles.
pub fn clone_source(obs: &Observation, cluster: &Cluster, leader: &str) -> Option<UpstreamConn> {
    let me = obs.config.name.as_str();
    let mut candidates: Vec<&str> = cluster
        .members
        .iter()
        .filter(|m| m.name != me && m.data.tag_bool("clonefrom"))
        .filter(|m| m.data.state == PgState::Running)
        .map(|m| m.name.as_str())
        .collect();
    candidates.sort();
    candidates
        .into_iter()
        .find_map(|name| upstream_of(cluster, name))
        .or_else(|| upstream_of(cluster, leader))
}
