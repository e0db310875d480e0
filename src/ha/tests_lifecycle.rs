//! Lifecycle decisions: cascading replication (`replicatefrom`), `nostream`, `clonefrom`,
//! slots for cascading members, and pause with a dead primary.

use super::*;
use crate::dcs::{Cluster, Leader, Member, MemberData};
use crate::postgres::types::{
    ConfigRole, ControlData, DataDirState, PgObservation, SqlObservation,
};
use serde_json::{Value, json};
use std::sync::Arc;

fn cfg(tags: Value) -> HaConfig {
    HaConfig {
        name: "pg0".into(),
        ttl: 30,
        loop_wait: 10,
        retry_timeout: 10,
        maximum_lag_on_failover: 1_048_576,
        use_pg_rewind: true,
        use_slots: true,
        remove_data_directory_on_rewind_failure: false,
        remove_data_directory_on_diverged_timelines: false,
        tags: tags.as_object().cloned().unwrap_or_default(),
        paused: false,
        sync: Default::default(),
        failsafe_mode: false,
        lifecycle: Default::default(),
        clone_without_leader: false,
        standby_cluster: None,
        slots: Default::default(),
    }
}

fn member(name: &str, port: u16, tags: Value) -> Member {
    Member {
        name: name.into(),
        version: 1,
        session: None,
        data: MemberData {
            conn_url: Some(format!("postgres://127.0.0.1:{port}/postgres")),
            api_url: Some(format!("http://127.0.0.1:{}/patroni", port + 3000)),
            state: crate::dcs::PgState::Running,
            tags: tags.as_object().cloned().unwrap_or_default(),
            ..Default::default()
        },
    }
}

/// pg0 (us), pg1 the leader on 5433, pg2 a replica on 5434.
fn cluster(members: Vec<Member>) -> Cluster {
    Cluster {
        initialize: Some("42".into()),
        leader: Some(Leader {
            name: "pg1".into(),
            version: 3,
            session: None,
        }),
        members,
        ..Default::default()
    }
}

fn three() -> Vec<Member> {
    vec![
        member("pg0", 5432, json!({})),
        member("pg1", 5433, json!({})),
        member("pg2", 5434, json!({})),
    ]
}

fn control(state: &str) -> DataDirState {
    DataDirState::Initialized(ControlData {
        system_identifier: "42".into(),
        cluster_state: state.into(),
        timeline: 1,
        ..Default::default()
    })
}

fn running_replica(following: u16) -> PgObservation {
    PgObservation {
        data_dir: control("in archive recovery"),
        postmaster_pid: Some(100),
        sql: Some(SqlObservation {
            in_recovery: true,
            timeline: 1,
            wal_lsn: 100,
            system_identifier: "42".into(),
            ..Default::default()
        }),
        configured_primary: Some(("127.0.0.1".to_string(), following)),
        standby_signal: true,
        ..Default::default()
    }
}

fn obs(tags: Value, c: Cluster, pg: PgObservation) -> Observation {
    Observation {
        now_ms: 1_000,
        wall_ms: 1_795_521_600_000,
        config: cfg(tags),
        dcs: DcsView::Ok(Arc::new(c)),
        pg,
        job: JobState::Idle,
        peers: vec![],
        failsafe: Default::default(),
    }
}

fn follow_port(d: &Decision) -> Option<Option<u16>> {
    d.actions.iter().find_map(|a| match a {
        Action::Follow { upstream } => Some(upstream.as_ref().map(|u| u.port)),
        _ => None,
    })
}

fn started_role(d: &Decision) -> Option<ConfigRole> {
    d.actions.iter().find_map(|a| match a {
        Action::StartJob(Job::Start { role }) => Some(role.clone()),
        _ => None,
    })
}

#[test]
fn replicatefrom_points_a_running_replica_at_the_named_member() {
    let o = obs(
        json!({"replicatefrom": "pg2"}),
        cluster(three()),
        running_replica(5433),
    );
    let d = decide(&o, &mut Memory::default());
    assert_eq!(follow_port(&d), Some(Some(5434)), "{d:#?}");
    assert!(d.message.contains("replicatefrom"), "{}", d.message);
}

#[test]
fn replicatefrom_a_member_that_is_gone_falls_back_to_the_leader() {
    let members = vec![
        member("pg0", 5432, json!({})),
        member("pg1", 5433, json!({})),
    ];
    let o = obs(
        json!({"replicatefrom": "pg2"}),
        cluster(members),
        running_replica(5434),
    );
    let d = decide(&o, &mut Memory::default());
    assert_eq!(follow_port(&d), Some(Some(5433)), "{d:#?}");
}

#[test]
fn replicatefrom_already_streaming_from_the_named_member_is_left_alone() {
    let o = obs(
        json!({"replicatefrom": "pg2"}),
        cluster(three()),
        running_replica(5434),
    );
    let d = decide(&o, &mut Memory::default());
    assert_eq!(follow_port(&d), None, "{d:#?}");
}

#[test]
fn a_stopped_cascading_replica_starts_from_the_named_member_without_a_slot() {
    let pg = PgObservation {
        data_dir: control("shut down in recovery"),
        standby_signal: true,
        ..Default::default()
    };
    let o = obs(json!({"replicatefrom": "pg2"}), cluster(three()), pg);
    let d = decide(&o, &mut Memory::default());
    match started_role(&d) {
        Some(ConfigRole::Standby {
            upstream: Some(u),
            slot_name,
        }) => {
            assert_eq!(u.port, 5434);
            assert_eq!(slot_name, None, "pg2 keeps no slot for us");
        }
        other => panic!("expected a standby start from pg2, got {other:?} in {d:#?}"),
    }
}

#[test]
fn nostream_replica_starts_without_an_upstream() {
    let pg = PgObservation {
        data_dir: control("shut down in recovery"),
        standby_signal: true,
        ..Default::default()
    };
    let o = obs(json!({"nostream": true}), cluster(three()), pg);
    let d = decide(&o, &mut Memory::default());
    assert!(
        matches!(
            started_role(&d),
            Some(ConfigRole::Standby { upstream: None, .. })
        ),
        "{d:#?}"
    );
}

fn empty_dir_source(members: Vec<Member>) -> u16 {
    let pg = PgObservation {
        data_dir: DataDirState::Empty,
        ..Default::default()
    };
    let o = obs(json!({}), cluster(members), pg);
    let d = decide(&o, &mut Memory::default());
    d.actions
        .iter()
        .find_map(|a| match a {
            Action::StartJob(Job::Basebackup { from }) => Some(from.port),
            _ => None,
        })
        .unwrap_or_else(|| panic!("expected a basebackup: {d:#?}"))
}

#[test]
fn clonefrom_member_is_preferred_for_the_basebackup() {
    let mut members = three();
    members[2] = member("pg2", 5434, json!({"clonefrom": true}));
    assert_eq!(empty_dir_source(members), 5434);
}

#[test]
fn a_clonefrom_member_that_is_not_running_is_skipped() {
    let mut members = three();
    members[2] = member("pg2", 5434, json!({"clonefrom": true}));
    members[2].data.state = crate::dcs::PgState::Stopped;
    assert_eq!(empty_dir_source(members), 5433);
}

#[test]
fn paused_replica_does_not_take_over_from_a_dead_primary() {
    let mut c = cluster(three());
    c.leader = None;
    let mut o = obs(json!({}), c, running_replica(5433));
    o.config.paused = true;
    let d = decide(&o, &mut Memory::default());
    let acquires = d
        .actions
        .iter()
        .any(|a| matches!(a, Action::AcquireLock { .. } | Action::Promote));
    assert!(!acquires, "no failover while paused: {d:#?}");
    assert!(d.message.starts_with("PAUSE"), "{}", d.message);
}

/// pg0 (us) is a replica of pg1 streaming idle; pg2 replicates from us.
fn middle_member(member_slots_ttl_ms: u64) -> Decision {
    let mut members = three();
    members[2] = member("pg2", 5434, json!({"replicatefrom": "pg0"}));
    let mut o = obs(json!({}), cluster(members), running_replica(5433));
    o.config.slots.member_slots_ttl_ms = member_slots_ttl_ms;
    decide(&o, &mut Memory::default())
}

fn created_slots(d: &Decision) -> Vec<String> {
    d.actions
        .iter()
        .find_map(|a| match a {
            Action::CreateSlots(names) => Some(names.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

#[test]
fn a_middle_member_creates_the_slot_of_a_member_that_replicates_from_it() {
    // With member slots on replicas (the default) and without them (member_slots_ttl 0):
    // a cascading member's slot lives on the member it streams from.
    for ttl in [30 * 60 * 1000, 0] {
        let d = middle_member(ttl);
        assert!(
            created_slots(&d).contains(&"pg2".to_string()),
            "member_slots_ttl {ttl}: {d:#?}"
        );
    }
    // Without member slots on replicas, pg1's slot (the leader) is not ours to keep.
    assert_eq!(created_slots(&middle_member(0)), vec!["pg2".to_string()]);
}
